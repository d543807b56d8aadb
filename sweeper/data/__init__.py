"""Images on disk and how they reach a batch: the image folder, the decode-once cache, the loaders and
augmentation."""
