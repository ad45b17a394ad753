"""Vaccine: perturbation-aware alignment and safe LoRA fine-tuning, free of web and queue code."""

__version__ = "0.1.0"
