"""Speech: audio I/O, MFCC features, the unit encoder (HuBERT or MFCC + k-means) and the tokenisation pipeline."""
