"""The processes in the pods the operator starts: the downloader, the InferenceJob sidecar
and the InferenceBatch workers."""
