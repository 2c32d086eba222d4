"""Running the model on an image, away from the event loop: threads, batches, processes."""
