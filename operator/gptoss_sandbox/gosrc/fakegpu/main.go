// Command fakegpu is a named stand-in for NVIDIA's Kubernetes device plugin
// (k8s-device-plugin), for the local test bed. It advertises --count fake
// devices of --resource (nvidia.com/gpu by default) to a real kubelet, so that
// pods asking for GPUs can be scheduled and started on a node that has none.
//
// Allocate hands a container no device nodes or mounts, only environment
// variables: NVIDIA_VISIBLE_DEVICES with the fake IDs, and GPTOSS_FAKE_GPU=1 so
// the workload can tell it got a fake GPU.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pb "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

func main() {
	resource := flag.String("resource", "nvidia.com/gpu", "extended resource name to advertise")
	count := flag.Int("count", 8, "number of fake devices")
	pluginDir := flag.String("plugin-dir", "/var/lib/kubelet/device-plugins", "kubelet's device plugin folder (holds kubelet.sock)")
	socketName := flag.String("socket-name", "fake-gpu.sock", "name of this plugin's socket in --plugin-dir")
	flag.Parse()
	log.SetPrefix("fakegpu: ")

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	p := &plugin{
		resource: *resource,
		socket:   filepath.Join(*pluginDir, *socketName),
		kubelet:  filepath.Join(*pluginDir, "kubelet.sock"),
	}
	for i := range *count {
		p.devices = append(p.devices, &pb.Device{ID: fmt.Sprintf("fake-gpu-%d", i), Health: pb.Healthy})
	}
	log.Printf("advertising %d x %s on %s", *count, p.resource, p.socket)

	// Each round serves on a fresh socket and registers; it ends when the kubelet
	// restarts (it wipes the plugin folder, our socket included) or on a signal.
	for ctx.Err() == nil {
		if err := p.serveAndRegister(ctx); err != nil {
			log.Printf("%v; starting over in 1s", err)
			sleep(ctx, time.Second)
		}
	}
	log.Print("stopped")
}

type plugin struct {
	pb.UnimplementedDevicePluginServer
	resource string
	socket   string // this plugin's socket
	kubelet  string // the kubelet's registration socket
	devices  []*pb.Device
}

// serveAndRegister serves the DevicePlugin service on p.socket, registers it with
// the kubelet, and returns once the socket is gone (nil), ctx is done (nil), or
// the server fails. The server is stopped and the socket removed on return.
func (p *plugin) serveAndRegister(ctx context.Context) error {
	if err := os.Remove(p.socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	lis, err := net.Listen("unix", p.socket)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	pb.RegisterDevicePluginServer(srv, p)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	defer func() {
		// Stop, not GracefulStop: ListAndWatch streams never end on their own.
		srv.Stop()
		os.Remove(p.socket)
	}()

	registered := false
	backoff := 500 * time.Millisecond
	for {
		if !registered {
			if err := p.register(ctx); err != nil {
				if ctx.Err() != nil {
					return nil // shutting down mid-call
				}
				log.Printf("registering with kubelet: %v (retrying in %v)", err, backoff)
			} else {
				log.Printf("registered %s with kubelet", p.resource)
				registered = true
			}
		}
		wait := time.Second
		if !registered {
			wait = backoff
			backoff = min(2*backoff, 5*time.Second)
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-served:
			return fmt.Errorf("grpc server: %w", err)
		case <-time.After(wait):
		}
		// Polled rather than watched: fsnotify is not a dependency of k8s.io/kubelet.
		if _, err := os.Stat(p.socket); errors.Is(err, os.ErrNotExist) {
			log.Print("plugin socket removed (kubelet restarted?); re-registering")
			return nil
		}
	}
}

// register calls Register on the kubelet's socket. The kubelet connects back to
// p.socket during the call, so the server must already be serving.
func (p *plugin) register(ctx context.Context) error {
	if _, err := os.Stat(p.kubelet); err != nil {
		return fmt.Errorf("kubelet not up: %w", err)
	}
	conn, err := grpc.NewClient("unix://"+p.kubelet, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = pb.NewRegistrationClient(conn).Register(ctx, &pb.RegisterRequest{
		Version:      pb.Version,
		Endpoint:     filepath.Base(p.socket), // relative to the kubelet's plugin folder
		ResourceName: p.resource,
		Options:      &pb.DevicePluginOptions{},
	})
	return err
}

func (p *plugin) GetDevicePluginOptions(context.Context, *pb.Empty) (*pb.DevicePluginOptions, error) {
	return &pb.DevicePluginOptions{}, nil
}

// ListAndWatch sends the devices once: fake devices never change health.
func (p *plugin) ListAndWatch(_ *pb.Empty, stream grpc.ServerStreamingServer[pb.ListAndWatchResponse]) error {
	if err := stream.Send(&pb.ListAndWatchResponse{Devices: p.devices}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

func (p *plugin) GetPreferredAllocation(context.Context, *pb.PreferredAllocationRequest) (*pb.PreferredAllocationResponse, error) {
	return &pb.PreferredAllocationResponse{}, nil
}

func (p *plugin) Allocate(_ context.Context, req *pb.AllocateRequest) (*pb.AllocateResponse, error) {
	resp := &pb.AllocateResponse{}
	for _, c := range req.ContainerRequests {
		log.Printf("allocating %v", c.DevicesIds)
		resp.ContainerResponses = append(resp.ContainerResponses, &pb.ContainerAllocateResponse{
			Envs: map[string]string{
				"NVIDIA_VISIBLE_DEVICES": strings.Join(c.DevicesIds, ","),
				"GPTOSS_FAKE_GPU":        "1",
			},
		})
	}
	return resp, nil
}

func (p *plugin) PreStartContainer(context.Context, *pb.PreStartContainerRequest) (*pb.PreStartContainerResponse, error) {
	return &pb.PreStartContainerResponse{}, nil
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
