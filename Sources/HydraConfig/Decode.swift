import Foundation

/// The keys each table accepts, in the order `resolvedTOML()` writes them.
enum Keys {
  static let job = ["name", "output", "seed"]
  static let cluster = [
    "backend", "devices", "device_memory", "host_memory", "kernels", "threads_per_device",
    "double_buffering", "activation_checkpointing", "placement", "spill_folder",
  ]
  static let data = [
    "format", "path", "validation_fraction", "label_column", "feature_scale", "header", "split", "split_seed",
  ]
  static let model = [
    "kind", "layers", "d_model", "heads", "context", "vocab", "hidden", "classes", "inputs", "init",
  ]
  static let train = [
    "steps", "batch_size", "optimizer", "lr", "weight_decay", "momentum", "betas", "eps", "schedule",
    "warmup_steps", "shuffle", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints",
  ]
  static let plugins = ["load"]
  /// `[selection]` keys the runtime reads; any other key is an option of the policy.
  static let selection = ["name", "metric", "min_steps", "reduction_factor"]
  static let tables = [
    "job", "cluster", "data", "model", "train", "sweep", "models", "partitioner", "scheduler", "selection",
    "plugins",
  ]
  /// Keys a sweep or a `[[models]]` entry may set.
  static let memberKeys = model.map { "model." + $0 } + train.map { "train." + $0 }
}

/// `path` made absolute (relative to `dir`), `~/` expanded, `.` and `..` resolved. No symlinks followed.
func resolvePath(_ path: String, relativeTo dir: String) -> String {
  var p = path
  if p == "~" || p.hasPrefix("~/") { p = NSHomeDirectory() + p.dropFirst() }
  if !p.hasPrefix("/") { p = dir + "/" + p }
  var parts: [Substring] = []
  for c in p.split(separator: "/") {
    if c == "." { continue }
    if c == ".." { if !parts.isEmpty { parts.removeLast() }; continue }
    parts.append(c)
  }
  return "/" + parts.joined(separator: "/")
}

func decodeJob(_ s: Section, jobDir: String) throws -> JobSection {
  try s.checkKeys(Keys.job)
  let name = try s.string("name")
  let allowed = name.unicodeScalars.allSatisfy {
    $0.isASCII && (CharacterSet.alphanumerics.contains($0) || $0 == "." || $0 == "_" || $0 == "-")
  }
  try s.check(!name.isEmpty && allowed, "name", "letters, digits, '.', '_' or '-' only")
  let output = try s.string("output", "runs/" + name)
  try s.check(!output.isEmpty, "output", "a path")
  let seed = try s.int("seed", 0)
  try s.check(seed >= 0, "seed", ">= 0")
  return JobSection(name: name, output: resolvePath(output, relativeTo: jobDir), seed: UInt64(seed))
}

private func registered(_ s: Section, _ key: String, _ value: String, _ names: [String], _ what: String) throws {
  guard !names.contains(value) else { return }
  throw s.error(key, "\(what) \(tomlString(value)) is not registered; registered: \(names.joined(separator: ", "))")
}

private func size(_ s: Section, _ key: String) throws -> Int? {
  guard let f = s.fields[key] else { return nil }
  switch f.value {
  case .int(let n):
    try s.check(n > 0, key, "a positive number of bytes")
    return n
  case .string(let text):
    switch parseSize(text) {
    case .success(let n): return n
    case .failure(let why): throw s.error(key, "\(s.name).\(key): \(why.message)")
    }
  default:
    throw s.error(
      key, "\(s.name).\(key): expected an integer (bytes) or a string like \"64MiB\", found \(f.value.kindName)")
  }
}

func decodeCluster(_ s: Section, known: KnownPlugins, jobDir: String) throws -> ClusterSection {
  try s.checkKeys(Keys.cluster)
  let backend = try s.string("backend", "shm")
  try registered(s, "backend", backend, known.backends, "backend")
  let devices = try s.int("devices", 1)
  try s.check((1...Limits.devices).contains(devices), "devices", "in 1...\(Limits.devices)")
  let deviceMemory = try size(s, "device_memory")
  let hostMemory = try size(s, "host_memory")
  let kernels = try s.string("kernels", "cpu")
  try registered(s, "kernels", kernels, known.kernels, "kernels")
  let threads = try s.int("threads_per_device", 1)
  try s.check((1...Limits.threads).contains(threads), "threads_per_device", "in 1...\(Limits.threads)")
  var cluster = ClusterSection(
    backend: backend, devices: devices, deviceMemory: deviceMemory, hostMemory: hostMemory,
    kernels: kernels, threadsPerDevice: threads)
  cluster.doubleBuffering = try s.bool("double_buffering", true)
  cluster.devicesGiven = backend == "mpi" && s.fields["devices"] != nil
  cluster.placement = try s.choice("placement", Placement.byModel)
  if s.fields["spill_folder"] != nil {
    let folder = try s.string("spill_folder")
    try s.check(!folder.isEmpty, "spill_folder", "a folder path")
    cluster.spillFolder = resolvePath(folder, relativeTo: jobDir)
  }
  switch s.fields["activation_checkpointing"]?.value {
  case nil: break
  case .bool(let on)?: cluster.activationCheckpointing = on ? .on : .off
  case .string("auto")?: cluster.activationCheckpointing = .auto
  case let other?:
    throw s.error(
      "activation_checkpointing",
      "cluster.activation_checkpointing: expected true, false or \"auto\", found \(other)")
  }
  return cluster
}

func decodeData(_ s: Section, jobDir: String) throws -> DataSection {
  try s.checkKeys(Keys.data)
  let format: DataFormat = try s.choice("format")
  let path = resolvePath(try s.string("path"), relativeTo: jobDir)
  guard FileManager.default.fileExists(atPath: path) else {
    throw s.error("path", "data.path: no such file: \(path)")
  }
  let fraction = try s.double("validation_fraction", 0.05)
  try s.check(fraction >= 0 && fraction < 1, "validation_fraction", "in [0, 1)")
  let scale = try s.double("feature_scale", 1.0)
  try s.check(scale.isFinite && scale != 0, "feature_scale", "finite and non-zero")
  var data = DataSection(
    format: format, path: path, validationFraction: fraction, labelColumn: try s.int("label_column", -1),
    featureScale: scale, header: try s.bool("header", false))
  data.split = try s.choice("split", ValidationSplit.last)
  data.splitSeed = try s.int("split_seed", 0)
  try s.check(data.splitSeed >= 0, "split_seed", ">= 0")
  return data
}

func decodeModel(_ s: Section, jobDir: String) throws -> ModelSection {
  try s.checkKeys(Keys.model)
  let kind: ModelKind = try s.choice("kind")
  var m = ModelSection(
    kind: kind, layers: try s.int("layers", 4), dModel: try s.int("d_model", 128), heads: try s.int("heads", 4),
    context: try s.int("context", 64), vocab: try s.int("vocab", 256), hidden: try s.ints("hidden", []),
    classes: try s.optionalInt("classes"), inputs: try s.optionalInt("inputs"), initPath: nil)
  for (key, v, limit) in [
    ("layers", m.layers, Limits.layers), ("d_model", m.dModel, Limits.width), ("heads", m.heads, Limits.heads),
    ("context", m.context, Limits.context), ("vocab", m.vocab, Limits.vocab),
  ] {
    try s.check((1...limit).contains(v), key, "in 1...\(limit)")
  }
  guard m.dModel % m.heads == 0 else {
    throw s.error(
      keys: ["d_model", "heads"],
      "model.d_model (\(m.dModel)) must be divisible by model.heads (\(m.heads))")
  }
  try s.check(
    m.hidden.allSatisfy { (1...Limits.width).contains($0) } && m.hidden.count <= Limits.layers, "hidden",
    "a list of at most \(Limits.layers) sizes, each in 1...\(Limits.width)")
  if let inputs = m.inputs { try s.check((1...Limits.width).contains(inputs), "inputs", "in 1...\(Limits.width)") }
  if kind == .mlp {
    guard let classes = m.classes else {
      throw s.error("kind", "model.classes is missing: required for kind = \"mlp\"")
    }
    try s.check((2...Limits.width).contains(classes), "classes", "in 2...\(Limits.width)")
  } else if let classes = m.classes {
    try s.check((2...Limits.width).contains(classes), "classes", "in 2...\(Limits.width)")
  }
  if let p = try s.optionalString("init") {
    let path = resolvePath(p, relativeTo: jobDir)
    guard FileManager.default.fileExists(atPath: path) else {
      throw s.error("init", "model.init: no such file: \(path)")
    }
    m.initPath = path
  }
  return m
}

func decodeTrain(_ s: Section) throws -> TrainSection {
  try s.checkKeys(Keys.train)
  let t = TrainSection(
    steps: try s.int("steps"), batchSize: try s.int("batch_size", 16),
    optimizer: try s.choice("optimizer", OptimizerName.adamw), lr: try s.double("lr", 1e-3),
    weightDecay: try s.double("weight_decay", 0), momentum: try s.double("momentum", 0.9),
    betas: try s.doubles("betas", [0.9, 0.999]), eps: try s.double("eps", 1e-8),
    schedule: try s.choice("schedule", LRSchedule.cosine),
    warmupSteps: try s.int("warmup_steps", 0), shuffle: try s.bool("shuffle", true),
    evalEvery: try s.int("eval_every", 100), evalBatches: try s.int("eval_batches", 20),
    checkpointEvery: try s.int("checkpoint_every", 0))
  try s.check((1...Limits.steps).contains(t.steps), "steps", "in 1...\(Limits.steps)")
  try s.check((1...Limits.batch).contains(t.batchSize), "batch_size", "in 1...\(Limits.batch)")
  try s.check(t.lr > 0 && t.lr.isFinite, "lr", "> 0")
  try s.check(t.weightDecay >= 0 && t.weightDecay.isFinite, "weight_decay", ">= 0")
  try s.check(t.momentum >= 0 && t.momentum < 1, "momentum", "in [0, 1)")
  try s.check(t.betas.count == 2 && t.betas.allSatisfy { $0 >= 0 && $0 < 1 }, "betas", "two numbers, each in [0, 1)")
  try s.check(t.eps > 0 && t.eps.isFinite, "eps", "> 0")
  try s.check(t.warmupSteps >= 0, "warmup_steps", ">= 0")
  guard t.warmupSteps <= t.steps else {
    throw s.error(
      keys: ["warmup_steps", "steps"],
      "train.warmup_steps (\(t.warmupSteps)) must be <= train.steps (\(t.steps))")
  }
  try s.check(t.evalEvery >= 0, "eval_every", ">= 0 (0 = only at the end)")
  try s.check(t.evalBatches >= 1, "eval_batches", ">= 1")
  try s.check(t.checkpointEvery >= 0, "checkpoint_every", ">= 0 (0 = only at the end)")
  var train = t
  train.keepCheckpoints = try s.int("keep_checkpoints", 2)
  try s.check(
    (1...1000).contains(train.keepCheckpoints), "keep_checkpoints", "in 1...1000 (complete checkpoints kept per model)")
  return train
}

/// `[partitioner]` / `[scheduler]`: `name` (registered) and every other key as an option.
func decodePlugin(_ s: Section, default d: String, registered names: [String]) throws -> PluginSection {
  let name = try s.string("name", d)
  try registered(s, "name", name, names, s.name)
  var options: [String: ConfigValue] = [:]
  for (k, f) in s.fields where k != "name" {
    guard let v = f.value.configValue else {
      throw s.error(k, "\(s.name).\(k): options must be plain values or arrays, found \(f.value.kindName)")
    }
    options[k] = v
  }
  return PluginSection(name: name, options: options)
}

func decodeSelection(_ s: Section, registered names: [String]) throws -> SelectionSection {
  var selection = SelectionSection(name: try s.string("name", "none"))
  try registered(s, "name", selection.name, names, s.name)
  selection.metric = try s.choice("metric", SelectionMetric.valLoss)
  selection.minSteps = try s.int("min_steps", 1)
  try s.check(selection.minSteps >= 1 && selection.minSteps <= Limits.steps, "min_steps", ">= 1")
  selection.reductionFactor = try s.int("reduction_factor", 3)
  try s.check(selection.reductionFactor >= 2 && selection.reductionFactor <= 1000, "reduction_factor", "in 2...1000")
  for (k, f) in s.fields where !Keys.selection.contains(k) {
    guard let v = f.value.configValue else {
      throw s.error(k, "\(s.name).\(k): options must be plain values or arrays, found \(f.value.kindName)")
    }
    selection.options[k] = v
  }
  return selection
}

func decodePlugins(_ s: Section, jobDir: String) throws -> PluginsSection {
  try s.checkKeys(Keys.plugins)
  let load = try s.strings("load", []).map { resolvePath($0, relativeTo: jobDir) }
  for p in load where !FileManager.default.fileExists(atPath: p) {
    throw s.error("load", "plugins.load: no such file: \(p)")
  }
  return PluginsSection(load: load)
}

/// Upper bounds on sizes, far above any model trained today, so that every size computed from a job
/// (parameters, bytes, FLOPs) fits in 64 bits: a block's parameters are at most 12 x 65536^2 floats,
/// its attention scores 1024 x 131072^2 per sample.
enum Limits {
  static let layers = 4096
  static let width = 65536  // d_model, mlp widths, inputs, classes
  static let heads = 1024
  static let context = 131072
  static let vocab = 16_777_216
  static let batch = 65536
  static let steps = 1_000_000_000
  static let devices = 65536
  static let threads = 1024
  /// Dotted key parts and nesting of arrays and inline tables in a job file.
  static let depth = 64
  /// A job file's size.
  static let fileBytes = 4 << 20
}
