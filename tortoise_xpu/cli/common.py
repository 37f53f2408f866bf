"""Argument helpers shared by several subcommands."""

from __future__ import annotations

import argparse


def add_device_args(p: argparse.ArgumentParser) -> None:
    """--device / --dtype / memory overrides, as every command that runs models takes them."""
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:N, rocm, xpu, xpu:N, mps, directml, dml, dml:N (default: auto)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="override the backend policy's dtype for every stage")
    p.add_argument("--batch-size", type=int, default=None, help="override the AR batch size")
    vram = p.add_mutually_exclusive_group()
    vram.add_argument("--low-vram", action="store_true", help="move each model to the device only for its stage")
    vram.add_argument("--high-vram", action="store_true", help="keep every model resident on the device")


def add_models_dir_arg(p: argparse.ArgumentParser) -> None:
    """--models-dir, defaulting to $TORTOISE_XPU_MODELS or the user cache."""
    p.add_argument("--models-dir", default=None,
                   help="folder with the model files (default: $TORTOISE_XPU_MODELS or the user cache)")
