/// `[job]`: what the job is called, where its output goes, the seed every member's seed derives from.
public struct JobSection: Sendable, Equatable {
  /// Required; letters, digits, `.`, `_`, `-`.
  public var name: String
  /// Absolute. Default `<folder of job.toml>/runs/<name>`; a relative path is relative to that folder.
  public var output: String
  /// Default 0. See `memberSeed(jobSeed:index:)` for how each member's seed derives from it.
  public var seed: UInt64
}

/// `[cluster]`: where shard tasks run.
public struct ClusterSection: Sendable, Equatable {
  /// A registered backend name; default `"shm"`.
  public var backend: String
  /// Default 1, at least 1. Under `mpi` the runtime checks it against the number of ranks.
  public var devices: Int
  /// Bytes per device for resident shards (key `device_memory`); nil = unlimited.
  public var deviceMemory: Int?
  /// Bytes of host RAM for spilled shard state (key `host_memory`); nil = unlimited.
  public var hostMemory: Int?
  /// A registered kernels name; default `"cpu"`.
  public var kernels: String
  /// Default 1, at least 1 (key `threads_per_device`).
  public var threadsPerDevice: Int
  /// Bring the next shard's state in while the current one computes; partitions then leave room
  /// for two shards per device. Default true (key `double_buffering`).
  public var doubleBuffering: Bool = true
  /// Key `activation_checkpointing`, written as a TOML boolean or the string "auto": whether a
  /// shard keeps only its input activation between its forward and backward and recomputes the
  /// rest. `auto` (the default) decides from what the host store can hold.
  public var activationCheckpointing = ActivationCheckpointing.auto
  /// Under `mpi`, whether the job file (or `--set`) gave `devices`: the number of ranks is the
  /// number of devices, and only a value given explicitly can disagree with it. False otherwise.
  public var devicesGiven = false
  /// Under `mpi`, how shard states get their home ranks at the start (key `placement`):
  /// `"by-model"` (default) keeps each model's shards on one rank, models balanced by estimated
  /// work; `"by-shard"` balances shards one by one, so a model's chain crosses ranks.
  public var placement = Placement.byModel
  /// Where shard state past `host_memory` is written (key `spill_folder`; relative to the job
  /// file); nil: `<output>/spill`. Each process makes a folder of its own inside it (and removes
  /// it at the end), so a path every node has locally (its scratch disk) keeps spilling off the
  /// shared filesystem under `mpi`.
  public var spillFolder: String?
}

/// `[data]`: the data set, split into training and validation by `validationFraction`.
public struct DataSection: Sendable, Equatable {
  /// `text` (bytes), `tokens` (uint16 LE) or `csv`. Required.
  public var format: DataFormat
  /// Absolute; must exist. Required; a relative path is relative to the job file's folder.
  public var path: String
  /// Default 0.05, in [0, 1) (key `validation_fraction`).
  public var validationFraction: Double
  /// csv: the label's column, negative counting from the end; default -1 (key `label_column`).
  public var labelColumn: Int
  /// csv: features are multiplied by this; default 1.0 (key `feature_scale`).
  public var featureScale: Double
  /// csv: whether the first row is a header; default false.
  public var header: Bool
  /// csv: `"last"` (default: validation is the last rows of the file) or `"shuffled"` (the rows are
  /// permuted with `split_seed` first, so validation is a seeded random sample) (key `split`).
  public var split = ValidationSplit.last
  /// csv with `split = "shuffled"`: the permutation's seed, default 0, shared by every model of
  /// the job so that they all see the same split (key `split_seed`).
  public var splitSeed: Int = 0
}

/// `[model]`: the architecture, shared by every member unless a sweep or `[[models]]` overrides it.
public struct ModelSection: Sendable, Hashable {
  /// `"gpt"` or `"mlp"`. Required.
  public var kind: ModelKind
  // gpt
  public var layers: Int  // default 4
  public var dModel: Int  // key d_model, default 128; a multiple of heads
  public var heads: Int  // default 4
  public var context: Int  // default 64
  public var vocab: Int  // default 256
  // mlp
  /// Hidden layer widths, each > 0; default `[]`.
  public var hidden: [Int]
  /// Number of classes; required for mlp, at least 2.
  public var classes: Int?
  /// Number of input features; optional, checked against the data by the runtime.
  public var inputs: Int?
  /// Weights to start from (key `init`): absolute, must exist.
  public var initPath: String?

  /// The `[model]` defaults, for building a model without a job file (tests, benchmarks).
  public init(
    kind: ModelKind, layers: Int = 4, dModel: Int = 128, heads: Int = 4, context: Int = 64, vocab: Int = 256,
    hidden: [Int] = [], classes: Int? = nil, inputs: Int? = nil, initPath: String? = nil
  ) {
    self.kind = kind; self.layers = layers; self.dModel = dModel; self.heads = heads; self.context = context
    self.vocab = vocab; self.hidden = hidden; self.classes = classes; self.inputs = inputs; self.initPath = initPath
  }
}

/// `[train]`: the optimisation, shared by every member unless a sweep or `[[models]]` overrides it.
public struct TrainSection: Sendable, Hashable {
  public var steps: Int  // required, >= 1
  public var batchSize: Int  // batch_size, default 16, >= 1
  public var optimizer: OptimizerName  // "adamw" (default) | "sgd"
  public var lr: Double  // default 1e-3, > 0
  public var weightDecay: Double  // weight_decay, default 0, >= 0
  public var momentum: Double  // sgd; default 0.9, in [0, 1)
  public var betas: [Double]  // adamw; default [0.9, 0.999], two values each in [0, 1)
  public var eps: Double  // adamw; default 1e-8, > 0
  public var schedule: LRSchedule  // "cosine" (default) | "constant"
  public var warmupSteps: Int  // warmup_steps, default 0, in 0...steps
  public var shuffle: Bool  // default true
  public var evalEvery: Int  // eval_every, default 100, >= 0; 0 = only at the end
  public var evalBatches: Int  // eval_batches, default 20, >= 1
  public var checkpointEvery: Int  // checkpoint_every, default 0, >= 0; 0 = only at the end
  public var keepCheckpoints: Int = 2  // keep_checkpoints, default 2, in 1...1000: complete ones kept per model

  /// The `[train]` defaults, for training without a job file (tests, benchmarks).
  public init(
    steps: Int, batchSize: Int = 16, optimizer: OptimizerName = .adamw, lr: Double = 1e-3, weightDecay: Double = 0,
    momentum: Double = 0.9, betas: [Double] = [0.9, 0.999], eps: Double = 1e-8, schedule: LRSchedule = .cosine,
    warmupSteps: Int = 0, shuffle: Bool = true, evalEvery: Int = 100, evalBatches: Int = 20, checkpointEvery: Int = 0
  ) {
    self.steps = steps; self.batchSize = batchSize; self.optimizer = optimizer; self.lr = lr
    self.weightDecay = weightDecay; self.momentum = momentum; self.betas = betas; self.eps = eps
    self.schedule = schedule; self.warmupSteps = warmupSteps; self.shuffle = shuffle; self.evalEvery = evalEvery
    self.evalBatches = evalBatches; self.checkpointEvery = checkpointEvery
  }
}

/// `[partitioner]` or `[scheduler]`: a registered plugin's name and every other key as its options.
public struct PluginSection: Sendable, Equatable {
  public var name: String
  public var options: [String: ConfigValue]

  public init(name: String, options: [String: ConfigValue] = [:]) {
    self.name = name
    self.options = options
  }
}

/// `[selection]`: early stopping. `name` is a registered policy ("none", the default: every model
/// trains to the end); models are compared by `metric` at rungs `min_steps · reduction_factor^k`
/// below `train.steps`; every other key is an option of the policy.
public struct SelectionSection: Sendable, Equatable {
  public var name: String
  public var metric: SelectionMetric
  public var minSteps: Int
  public var reductionFactor: Int
  public var options: [String: ConfigValue]
  public init(
    name: String = "none", metric: SelectionMetric = .valLoss, minSteps: Int = 1, reductionFactor: Int = 3,
    options: [String: ConfigValue] = [:]
  ) {
    self.name = name
    self.metric = metric
    self.minSteps = minSteps
    self.reductionFactor = reductionFactor
    self.options = options
  }
  public var rungs: Rungs { Rungs(minSteps: minSteps, reductionFactor: reductionFactor) }
}

/// `[plugins]`: shared libraries implementing the C ABI, loaded before the job runs.
public struct PluginsSection: Sendable, Equatable {
  /// Absolute paths; each must exist. Relative paths are relative to the job file's folder.
  public var load: [String]
}

/// One value a member changes from the base `[model]` / `[train]`: `key` is dotted (`"train.lr"`).
public struct Override: Sendable, Equatable {
  public var key: String
  public var value: ConfigValue

  public init(key: String, value: ConfigValue) {
    self.key = key
    self.value = value
  }
}

/// One `[sweep]` axis: a dotted key and the values it takes, in the order written.
public struct SweepAxis: Sendable, Equatable {
  public var key: String
  public var values: [ConfigValue]
}

/// One model of the job, with its resolved settings.
public struct ModelMember: Sendable, Equatable {
  /// `m000`, `m001`, ...: sweep members first (cartesian product, last key fastest), then `[[models]]`.
  public var id: String
  /// What this member changes from the base `[model]` / `[train]`, in the order written.
  public var overrides: [Override]
  /// `memberSeed(jobSeed:index:)` of the job seed and this member's index.
  public var seed: UInt64
  public var model: ModelSection
  public var train: TrainSection
}

/// A member's seed: the SplitMix64 finalizer applied to `jobSeed ^ (index &* 0x9E3779B97F4A7C15)`.
///
/// Fixed forever: changing it changes every model's initial weights and data order.
public func memberSeed(jobSeed: UInt64, index: Int) -> UInt64 {
  var z = jobSeed ^ (UInt64(index) &* 0x9E37_79B9_7F4A_7C15)
  z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
  z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
  return z ^ (z >> 31)
}

// The closed sets of job-file values, as the job file spells them.

/// `[model] kind`.
public enum ModelKind: String, Sendable, CaseIterable { case gpt, mlp }
/// `[train] optimizer`.
public enum OptimizerName: String, Sendable, CaseIterable { case adamw, sgd }
/// `[train] schedule`: the learning rate after warm-up.
public enum LRSchedule: String, Sendable, CaseIterable { case cosine, constant }
/// `[cluster] placement`: how shard states get their home ranks under `mpi`.
public enum Placement: String, Sendable, CaseIterable {
  case byModel = "by-model"
  case byShard = "by-shard"
}
/// `[cluster] activation_checkpointing`: `true`, `false` or `"auto"` in the job file.
public enum ActivationCheckpointing: Sendable, Equatable {
  case on, off, auto
}
/// `[data] split` (csv): which rows are the validation set.
public enum ValidationSplit: String, Sendable, CaseIterable { case last, shuffled }
