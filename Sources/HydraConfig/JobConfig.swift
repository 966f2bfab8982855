// Filled in by the job.toml work.
