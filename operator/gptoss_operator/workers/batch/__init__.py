"""InferenceBatch workers: the shard runner and the merge, and what they share."""
