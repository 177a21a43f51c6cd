"""A distributed data-and-training pipeline: Spark curation, Ray Train training, evaluation."""

__version__ = "0.1.0"
