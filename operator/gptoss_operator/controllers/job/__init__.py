"""InferenceJob: the queue's housekeeping (leases, deadlines, retention) and job status."""
