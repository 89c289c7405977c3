"""InferenceBatch: the shards' Indexed Job, the merge Job and the batch's status."""
