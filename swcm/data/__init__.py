"""Data for swcm pretraining: raw text -> webdataset shards -> streamed, mixed, noised batches."""
