print("hydra-mpi: not built yet")
