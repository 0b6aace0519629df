"""voxserve's HTTP service: Litestar routes over per-model batching schedulers."""
