"""Data, models and training: datasets and their streamed images, the input contract's sources, model creation and the training loop."""
