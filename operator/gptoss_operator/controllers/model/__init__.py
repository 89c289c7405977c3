"""GptOssModel: the download Job, the vLLM Deployment and Service, the model's status."""
