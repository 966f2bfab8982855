print("hydra-bench: not built yet")
