print("hydra-pingpong: not built yet")
