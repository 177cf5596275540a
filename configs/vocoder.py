"""Train a unit vocoder (CodeHiFiGAN) on your own units and audio: HiFi-GAN V1 with CodeHiFiGAN's unit input.

    python -m slam_jax.main --config configs/vocoder.py --config.data.train_path=UNITS_DIR --workdir W

UNITS_DIR is a tokeniser's output (`mode: tokenize`, its features.jsonl names each audio file); WORKDIR/vocoder
is the trained vocoder at the end (`slam_jax.load_vocoder`; `python -m conversion.vocoder_to_textless` writes it
in textlesslib's layout). docs/vocoder.md walks through the recipe.

| HiFi-GAN V1 (Kong et al., 2020) + CodeHiFiGAN (Polyak et al., 2021) | value          | key                   |
|----------------------------------------|------------------------------------------|-------------------------------|
| upsampling (x640: 25 Hz units, 16 kHz) | rates 5, 4, 4, 4, 2; kernels 11, 8, 8, 8, 4 | model.upsample_*           |
| channels after the first conv          | 512                                      | model.upsample_initial_channel |
| residual blocks (type 1)               | kernels 3, 7, 11; dilations 1, 3, 5      | model.resblock_*              |
| unit embedding                         | 128                                      | model.embedding_dim           |
| duration predictor: hidden, dropout    | 128, 0.5                                 | model.duration_predictor_dim  |
| discriminators                         | MPD periods 2, 3, 5, 7, 11 + MSD         | model.periods                 |
| losses: LSGAN, feature matching x 2,   | mel L1 x 45, duration MSE x 1            | train.*_weight                |
| mel of the loss                        | n_fft 1024, hop 256, win 1024, 80 mels   | mel.*                         |
| optimiser                              | AdamW 2e-4, betas 0.8 / 0.99, wd 0.01    | train.*                       |
| learning-rate decay                    | x 0.999 per epoch                        | train.lr_decay                |
| batch x segment (data.segment_frames)  | 16 x 8960 samples (14 frames)            | train.per_device_batch_size   |
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.mode = "train_vocoder"
    config.seed = 1234  # init, clip order, segment starts, dropout

    config.data = ConfigDict()
    config.data.train_path = ""  # tokeniser output folders or features.jsonl files (comma list)
    config.data.valid_path = ""  # held-out clips ('' = valid_clips of train_path, chosen by the seed)
    config.data.valid_clips = 4  # clips held out of train_path for the validation mel L1
    config.data.audio_root = ""  # folder that relative file_name entries are under ('' = as written)
    config.data.num_units = 500  # unit ids 0..num_units - 1 (the tokeniser's k-means size)
    config.data.segment_frames = 14  # frames per training segment: 14 x 640 = 8960 samples (CodeHiFiGAN)
    config.data.read_threads = 8  # audio files read in parallel at start-up

    config.model = ConfigDict()
    config.model.init_from = ""  # a vocoder folder to fine-tune ('' = a new vocoder); its architecture is used
    config.model.embedding_dim = 128
    config.model.upsample_rates = (5, 4, 4, 4, 2)  # their product is samples per unit frame (640: 25 Hz at 16 kHz)
    config.model.upsample_kernel_sizes = (11, 8, 8, 8, 4)  # each minus its rate must be even
    config.model.upsample_initial_channel = 512
    config.model.resblock = "1"
    config.model.resblock_kernel_sizes = (3, 7, 11)
    config.model.resblock_dilation_sizes = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    config.model.duration_predictor_dim = 128  # 0 = no duration predictor
    config.model.duration_dropout = 0.5
    config.model.periods = (2, 3, 5, 7, 11)
    config.model.discriminator_divisor = 1  # both discriminators' channels divided by 1 (paper), 2, 4 or 8 (small runs)

    config.mel = ConfigDict()
    config.mel.n_fft = 1024
    config.mel.num_mels = 80
    config.mel.hop_size = 256
    config.mel.win_size = 1024
    config.mel.fmin = 0.0
    config.mel.fmax_for_loss = 0.0  # 0 = Nyquist (HiFi-GAN's fmax_for_loss None)

    config.mesh = ConfigDict()
    config.mesh.data = -1  # every device splits the rows
    config.mesh.fsdp = 1
    config.mesh.tensor = 1

    config.train = ConfigDict()
    config.train.per_device_batch_size = 16  # HiFi-GAN: 16 on one GPU
    config.train.max_steps = 0  # optimiser steps (HiFi-GAN V1: 2.5M; 0 = until the time budget)
    config.train.time_budget = "24h"  # wall-clock budget ('' = max_steps only)
    config.train.calibration_steps = 10
    config.train.learning_rate = 2e-4
    config.train.lr_decay = 0.999  # per epoch
    config.train.adam_b1 = 0.8
    config.train.adam_b2 = 0.99
    config.train.adam_eps = 1e-8
    config.train.weight_decay = 0.01  # torch.optim.AdamW's default, which HiFi-GAN keeps
    config.train.mel_weight = 45.0
    config.train.duration_weight = 1.0  # CodeHiFiGAN's dur_prediction_weight
    config.train.eval_every = 1000  # steps between validations (mel L1 of the held-out clips, TensorBoard media)
    config.train.stall_steps = 20
    config.train.host_timeout = 60.0
    config.train.allow_changed = ""

    config.checkpoint = ConfigDict()
    config.checkpoint.every_steps = 5000  # HiFi-GAN: 5000
    config.checkpoint.every_minutes = 30.0
    config.checkpoint.keep = 3
    config.checkpoint.keep_period = 0
    config.checkpoint.commit_timeout_minutes = 30.0

    config.log = ConfigDict()
    config.log.every_steps = 100
    config.log.tensorboard = True
    config.log.wandb_project = ""
    config.log.progress = "auto"
    return config
