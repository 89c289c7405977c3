"""gptoss-download: fetch a Hugging Face repo into the model's volume, resumably."""
