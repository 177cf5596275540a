"""A self-check of conversion and inference: runs on a laptop CPU with nothing downloaded.

`mode: selfcheck`: a random small Qwen2 goes through HF export, TWIST
conversion, scoring, KV-cache decoding and a slamkit round trip.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.mode = "selfcheck"  # the job: conversion + forward-pass checks on a random model
    config.seed = 0  # global seed (weights and unit sequences)

    config.model = ConfigDict()
    config.model.preset = "demo"  # 4 layers x 128 wide; the paper's is `slam` (358M)

    config.selfcheck = ConfigDict()
    config.selfcheck.text_vocab_size = 2048  # rows of the random "text" embedding (Qwen2.5: 151,936)
    config.selfcheck.num_units = 500  # speech units after the TWIST swap (paper: 500 -> vocab 502)
    config.selfcheck.lengths = (50, 125, 250)  # units per scored sequence (25 Hz: 2 s, 5 s, 10 s)
    return config
