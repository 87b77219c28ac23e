"""rerank_ray: train rerankers by contrastive learning or distillation, and compare them at scale."""

__version__ = "0.1.0"
