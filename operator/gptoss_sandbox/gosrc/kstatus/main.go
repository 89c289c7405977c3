// Command kstatus prints the kstatus verdict of Kubernetes objects read as JSON on stdin.
//
// Input is one JSON object or a JSON list of objects; output is one JSON line per
// object: {"status": "<Current|InProgress|Failed|...>", "message": "..."}.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	data, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	objects, err := decode(data)
	if err != nil {
		return err
	}
	encoder := json.NewEncoder(out)
	for i, object := range objects {
		result, err := status.Compute(&unstructured.Unstructured{Object: object})
		if err != nil {
			return fmt.Errorf("object %d: %w", i, err)
		}
		if err := encoder.Encode(verdict{string(result.Status), result.Message}); err != nil {
			return err
		}
	}
	return nil
}

// decode reads one object or a list of objects, keeping integers as int64 (as
// unstructured.NestedInt64 expects), which encoding/json alone would make float64.
func decode(data []byte) ([]map[string]interface{}, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) > 0 && trimmed[0] == '[' {
		var items []interface{}
		if err := utiljson.Unmarshal(trimmed, &items); err != nil {
			return nil, err
		}
		objects := make([]map[string]interface{}, 0, len(items))
		for i, item := range items {
			object, ok := item.(map[string]interface{})
			if !ok {
				return nil, fmt.Errorf("item %d is not a JSON object", i)
			}
			objects = append(objects, object)
		}
		return objects, nil
	}
	var object map[string]interface{}
	if err := utiljson.Unmarshal(trimmed, &object); err != nil {
		return nil, err
	}
	return []map[string]interface{}{object}, nil
}
