"""Backbones and the ReID model (BNNeck head, normalisation inside)."""

from benchmark.models.backbones import BACKBONES, build_backbone, load_backbone_weights
from benchmark.models.reid import ModelConfig, ReidModel, ReidOutput, eval_mode, extract_embeddings

__all__ = ["BACKBONES", "ModelConfig", "ReidModel", "ReidOutput", "build_backbone", "eval_mode", "extract_embeddings",
           "load_backbone_weights"]
