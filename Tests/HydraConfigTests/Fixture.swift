import Foundation
import XCTest

@testable import HydraConfig

/// A temporary folder holding a job file and a small data file.
final class Fixture {
  let dir: String

  init() throws {
    dir = NSTemporaryDirectory() + "hydra-config-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: dir + "/data", withIntermediateDirectories: true)
    try "a fortune\n".write(toFile: dir + "/data/fortunes.txt", atomically: true, encoding: .utf8)
    try "x".write(toFile: dir + "/data.txt", atomically: true, encoding: .utf8)
  }

  deinit { try? FileManager.default.removeItem(atPath: dir) }

  @discardableResult
  func write(_ text: String, as name: String = "job.toml") throws -> String {
    let path = dir + "/" + name
    try text.write(toFile: path, atomically: true, encoding: .utf8)
    return path
  }

  func load(_ text: String, overrides: [String] = []) throws -> JobConfig {
    try JobConfig.load(path: write(text), known: Fixture.known, overrides: overrides)
  }

  /// Loading `text` must fail with a ConfigError whose description holds `job.toml:<line>` (or, for
  /// `line == nil`, no line) and every one of `words`.
  func assertFails(
    _ text: String, line: Int?, _ words: [String], overrides: [String] = [],
    file: StaticString = #filePath, at: UInt = #line
  ) {
    do {
      let config = try load(text, overrides: overrides)
      XCTFail("expected an error, got \(config.members.count) members", file: file, line: at)
    } catch let e as ConfigError {
      let d = e.description
      if let line {
        XCTAssertTrue(d.contains("job.toml:\(line): "), "wanted line \(line): \(d)", file: file, line: at)
        XCTAssertEqual(e.line, line, d, file: file, line: at)
      } else {
        XCTAssertNil(e.line, d, file: file, line: at)
        XCTAssertTrue(d.contains("job.toml: "), d, file: file, line: at)
      }
      for w in words { XCTAssertTrue(d.contains(w), "wanted \"\(w)\" in: \(d)", file: file, line: at) }
    } catch {
      XCTFail("not a ConfigError: \(error)", file: file, line: at)
    }
  }

  static let known = KnownPlugins(
    backends: ["shm", "mpi"], kernels: ["cpu", "reference"],
    partitioners: ["memory-greedy", "balanced", "fixed"],
    schedulers: ["lrtf", "fifo", "round-robin", "random", "model-parallel", "sequential"],
    selections: ["none", "sha", "asha", "median"])

  /// The reference example of the job file's contract (every table and key), verbatim.
  static let reference = """
    [job]
    name = "fortunes-lr"           # required
    output = "runs/fortunes-lr"    # default runs/<name>, relative to the job file
    seed = 7

    [cluster]
    backend = "shm"                # "shm" (default) | "mpi"
    devices = 2                    # shm: devices in this process; mpi: must equal the number of ranks
    device_memory = "64MiB"        # per-device budget for resident shards; KiB/MiB/GiB and kB/MB/GB
    host_memory = "1GiB"           # host store in RAM; beyond it shard state spills to disk
    kernels = "cpu"                # "cpu" (OpenBLAS) | "reference"
    threads_per_device = 1

    [data]
    format = "text"                # "text" (bytes, vocab 256) | "tokens" (uint16 LE) | "csv"
    path = "data/fortunes.txt"     # relative to the job file
    validation_fraction = 0.05
    # csv: label_column = -1, feature_scale = 0.0625, header = false

    [model]
    kind = "gpt"                   # "gpt" | "mlp"
    layers = 4
    d_model = 128
    heads = 4
    context = 64
    vocab = 256
    # mlp: hidden = [128, 128], classes = 10
    # init = "path/to/hf-gpt2-dir-or-safetensors"

    [train]
    steps = 300
    batch_size = 16
    optimizer = "adamw"            # "sgd" | "adamw"
    lr = 1e-3
    weight_decay = 0.0             # sgd: momentum = 0.9; adamw: betas = [0.9, 0.999], eps = 1e-8
    schedule = "cosine"            # "constant" | "cosine"
    warmup_steps = 20
    shuffle = true
    eval_every = 100
    checkpoint_every = 100

    [sweep]                        # one model per combination: m000 = (3e-3, 8), m001 = (3e-3, 16), ...
    "train.lr" = [3e-3, 1e-3, 3e-4]
    "train.batch_size" = [8, 16]

    [partitioner]
    name = "balanced"              # "memory-greedy" | "balanced" | "fixed" (blocks_per_shard = N)

    [scheduler]
    name = "lrtf"                  # "lrtf" | "fifo" | "round-robin" | "random" | "model-parallel" | "sequential"

    [plugins]
    load = []                      # shared libraries implementing the C ABI

    """

  /// A small valid job: 12 lines, so text appended to it starts at line 13.
  static let minimal = """
    [job]
    name = "t"

    [data]
    format = "text"
    path = "data.txt"

    [model]
    kind = "gpt"

    [train]
    steps = 10

    """

  /// `minimal` with line `n` (1-based) replaced by `text` and `extra` appended (from line 13).
  static func minimal(replacing n: Int? = nil, with text: String = "", appending extra: String = "") -> String {
    var lines = minimal.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    if let n { lines[n - 1] = text }
    return lines.joined(separator: "\n") + extra
  }
}
