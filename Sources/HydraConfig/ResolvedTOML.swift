extension JobConfig {
  /// The job as TOML text with every default filled in and every path absolute: written as `job.toml`
  /// in the output folder. Loading it (from any folder) gives an equal `JobConfig`. Sizes are written in
  /// bytes; an unlimited memory budget is left out. Plugin options are written sorted by key.
  public func resolvedTOML() -> String {
    var out = "# Resolved from \(file)\n"
    func table(_ name: String, _ rows: [(String, ConfigValue?)]) {
      out += "\n[\(name)]\n"
      for (k, v) in rows { if let v { out += "\(tomlKey(k)) = \(v)\n" } }
    }
    func int(_ v: Int?) -> ConfigValue? { v.map { .int($0) } }
    func str(_ v: String?) -> ConfigValue? { v.map { .string($0) } }

    table(
      "job", [("name", str(job.name)), ("output", str(job.output)), ("seed", .int(Int(truncatingIfNeeded: job.seed)))])
    table(
      "cluster",
      [
        ("backend", str(cluster.backend)),
        // Under mpi the ranks are the devices: written only when the job gave it.
        ("devices", cluster.backend == "mpi" && !cluster.devicesGiven ? nil : int(cluster.devices)),
        ("device_memory", int(cluster.deviceMemory)), ("host_memory", int(cluster.hostMemory)),
        ("kernels", str(cluster.kernels)), ("threads_per_device", int(cluster.threadsPerDevice)),
        ("double_buffering", .bool(cluster.doubleBuffering)),
        (
          "activation_checkpointing",
          cluster.activationCheckpointing == .auto ? str("auto") : .bool(cluster.activationCheckpointing == .on)
        ),
        ("placement", str(cluster.placement.rawValue)), ("spill_folder", str(cluster.spillFolder)),
      ])
    table(
      "data",
      [
        ("format", str(data.format.rawValue)), ("path", str(data.path)),
        ("validation_fraction", .double(data.validationFraction)),
        ("label_column", int(data.labelColumn)), ("feature_scale", .double(data.featureScale)),
        ("header", .bool(data.header)),
        ("split", str(data.split.rawValue)), ("split_seed", int(data.splitSeed)),
      ])
    table(
      "model",
      [
        ("kind", str(model.kind.rawValue)), ("layers", int(model.layers)), ("d_model", int(model.dModel)),
        ("heads", int(model.heads)), ("context", int(model.context)), ("vocab", int(model.vocab)),
        ("hidden", .array(model.hidden.map { .int($0) })), ("classes", int(model.classes)),
        ("inputs", int(model.inputs)), ("init", str(model.initPath)),
      ])
    table(
      "train",
      [
        ("steps", int(train.steps)), ("batch_size", int(train.batchSize)), ("optimizer", str(train.optimizer.rawValue)),
        ("lr", .double(train.lr)), ("weight_decay", .double(train.weightDecay)), ("momentum", .double(train.momentum)),
        ("betas", .array(train.betas.map { .double($0) })), ("eps", .double(train.eps)),
        ("schedule", str(train.schedule.rawValue)), ("warmup_steps", int(train.warmupSteps)),
        ("shuffle", .bool(train.shuffle)),
        ("eval_every", int(train.evalEvery)), ("eval_batches", int(train.evalBatches)),
        ("checkpoint_every", int(train.checkpointEvery)), ("keep_checkpoints", int(train.keepCheckpoints)),
      ])
    if !sweep.isEmpty {
      table("sweep", sweep.map { ($0.key, .array($0.values)) })
    }
    for entry in explicitModels {
      out += "\n[[models]]\n"
      for o in entry { out += "\(tomlString(o.key)) = \(o.value)\n" }
    }
    for (name, p) in [("partitioner", partitioner), ("scheduler", scheduler)] {
      table(name, [("name", str(p.name))] + p.options.keys.sorted().map { ($0, p.options[$0]) })
    }
    table(
      "selection",
      [
        ("name", str(selection.name)), ("metric", str(selection.metric.rawValue)),
        ("min_steps", int(selection.minSteps)), ("reduction_factor", int(selection.reductionFactor)),
      ] + selection.options.keys.sorted().map { ($0, selection.options[$0]) })
    table("plugins", [("load", .array(plugins.load.map { .string($0) }))])
    return out
  }
}
