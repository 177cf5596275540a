"""Speech tokeniser, docs/recipe.md §1: audio -> mHuBERT-25Hz layer 11 -> 500 k-means units, deduplicated.

    python -m conversion.hubert_to_flax --model PATH/mhubert-base-25hz --out models/mhubert_25hz
    python -m conversion.kmeans_to_npy --kmeans mhubert_base_25hz_cp_mls_cv_sp_fisher_L11_km500.bin \\
        --out models/mhubert_25hz_L11_km500.npy --allow-pickle
    python -m slam_jax.main --config configs/tokenize.py --config.tokenize.data_path=AUDIO_DIR

Writes features.jsonl (`{"units", "duration", "file_name"}` per file, the reference's format) and errors.jsonl
into `tokenize.out_path` (default WORKDIR/units); `prepare` turns features.jsonl into unit stores.

Every path may be a bucket URL (gs://bucket/..., s3://bucket/...) as well as a local path: audio is streamed from
the bucket, the encoder is copied once into the local cache (SLAM_JAX_CACHE), the centroids are read, and the
outputs are written into the bucket (each file one upload, so a killed run leaves no half-written part).
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.mode = "tokenize"  # the job: audio -> units
    config.seed = 0  # global seed (k-means fitting only)

    config.tokenize = ConfigDict()
    config.tokenize.data_path = ""  # audio folder(s) (recursive wav/flac/ogg/mp3), list file(s) or glob; comma list;
    # local or gs:// / s3:// (folders, objects, globs and list files in a bucket)
    config.tokenize.out_path = ""  # output folder, local or gs:// / s3:// ('' = WORKDIR/units); re-running resumes
    config.tokenize.encoder_path = "models/mhubert_25hz"  # converted HuBERT dir or 'mfcc' (paper: mhubert-base-25hz)
    config.tokenize.layer = 11  # features = hidden_states[layer], HF numbering (paper: 11)
    config.tokenize.kmeans_path = "models/mhubert_25hz_L11_km500.npy"  # centroids .npy (paper: the official km500)
    config.tokenize.compute_dtype = "float32"  # encoder matmul dtype: float32 | bfloat16 (reference: float32)
    config.tokenize.reference_padding = False  # True = the reference's batch padding, no mask (units vary by batch)
    config.tokenize.dedup = True  # collapse repeated units, keep run lengths in `duration` (paper: True)
    config.tokenize.max_seconds = 3600.0  # s; read at most this much of a file, report it truncated (0 = no cap)
    config.tokenize.window_seconds = 60.0  # s; longer audio is encoded in windows of this length (0 = whole file)
    config.tokenize.window_overlap_seconds = 2.0  # s of overlap between windows, split at its middle
    config.tokenize.batch_size = 8  # windows per encoder call, over all local devices (reference: 8)
    config.tokenize.num_devices = 0  # local devices to shard batches over (0 = all)
    config.tokenize.micro_batch = 0  # rows per step on each device (0 = auto: 2 on a CPU, all on GPU/TPU)
    config.tokenize.buckets_per_octave = 8  # padded-length buckets per doubling: <= 12.5% padding, few compiles
    config.tokenize.scan_layers = False  # True = one compiled encoder layer under lax.scan (faster compiles;
    # unrolled layers ran 12% faster on a 2-core CPU)
    config.tokenize.conv_chunk_frames = -1  # conv front end over windows of this many frames, same features (0 =
    # whole input; -1 = auto: 25 = 1 s on a CPU, where the buffers then stay in cache (13% faster front end on a
    # 2-core CPU), the whole input on GPU/TPU)
    config.tokenize.num_workers = 4  # reader threads (decode, mix to mono, resample to 16 kHz)
    config.tokenize.shard_size = 256  # files per output part: the unit of atomic writes and of resuming
    config.tokenize.store = True  # also write the unit store (OUT/store: train/ + valid/) that pre-training reads
    config.tokenize.valid_fraction = 0.01  # held-out share of that store (by a stable hash of the file name)
    config.tokenize.progress = True  # tqdm bar with files/s and audio seconds per second
    config.tokenize.fit_units = 0  # > 0: fit this many centroids first if kmeans_path is absent (paper: 500)
    config.tokenize.fit_max_files = 1000  # files sampled (evenly over the list) for fitting
    config.tokenize.fit_max_frames = 200_000  # frames drawn at random from them for fitting
    config.tokenize.fit_num_init = 1  # k-means++ restarts; the lowest inertia wins (scikit-learn 'auto': 1)

    config.tokenize.mfcc = ConfigDict()  # used when encoder_path = 'mfcc' (configs/tokenize_mfcc.py)
    config.tokenize.mfcc.kind = "mfcc"  # mfcc | log_mel
    config.tokenize.mfcc.frame_samples = 640  # samples per frame at 16 kHz (640 = 40 ms, mHuBERT-25Hz's rate)
    config.tokenize.mfcc.n_fft = 1024  # samples per Hann window (64 ms)
    config.tokenize.mfcc.num_mels = 40  # mel bands
    config.tokenize.mfcc.num_mfcc = 20  # cepstral coefficients kept (kind = mfcc)
    return config
