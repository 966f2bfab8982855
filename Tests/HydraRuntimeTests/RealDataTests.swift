import Foundation
import HydraBackendSHM
import HydraBuiltins
import HydraConfig
import HydraCore
import HydraKernelsCPU
import HydraKernelsReference
import HydraPartitioners
import HydraRuntime
import HydraSchedulers
import XCTest

/// Whole jobs on the real data sets in Examples/data, through the same path as `hydra-mpi run`.
final class RealDataTests: XCTestCase {
  func testMLPReachesNinetyFivePercentOnDigits() throws {
    let dir = try temporaryFolder()
    let job = try writeJob(
      dir,
      """
      [job]
      name = "digits"
      seed = 3
      [cluster]
      devices = 1
      [data]
      format = "csv"
      path = "\(repositoryRoot)/Examples/data/digits.csv.gz"
      validation_fraction = 0.2
      split = "shuffled"
      feature_scale = 0.0625
      [model]
      kind = "mlp"
      hidden = [128]
      classes = 10
      [train]
      steps = 600
      batch_size = 32
      lr = 3e-3
      warmup_steps = 20
      eval_every = 0
      eval_batches = 1000
      """)
    let result = try runJob(job)
    let run = result.runs[0]
    let e = try XCTUnwrap(run.evaluations.last)
    XCTAssertEqual(run.status, .done)
    // 20 % of 1797 rows, every one of them evaluated.
    XCTAssertGreaterThanOrEqual(e.accuracy, 0.95)
    XCTAssertLessThan(e.loss, 0.25)
  }

  func testGPTOnFortunesGoesWellBelowTheUnigramEntropy() throws {
    let dir = try temporaryFolder()
    let job = try writeJob(
      dir,
      """
      [job]
      name = "fortunes"
      seed = 5
      [data]
      format = "text"
      path = "\(repositoryRoot)/Examples/data/fortunes.txt"
      validation_fraction = 0.05
      [model]
      kind = "gpt"
      layers = 2
      d_model = 64
      heads = 4
      context = 32
      [train]
      steps = 300
      batch_size = 16
      lr = 3e-3
      warmup_steps = 20
      eval_every = 0
      eval_batches = 40
      """)
    let result = try runJob(job)
    let run = result.runs[0]
    // The entropy of the byte distribution of the training split, computed here from counts: what
    // a model that ignores context can reach at best.
    let bytes = try Data(contentsOf: URL(fileURLWithPath: "\(repositoryRoot)/Examples/data/fortunes.txt"))
    let train = bytes.count - Int(Double(bytes.count) * 0.05)
    var counts = [Int](repeating: 0, count: 256)
    for b in bytes.prefix(train) { counts[Int(b)] += 1 }
    let entropy = counts.filter { $0 > 0 }.reduce(0.0) { h, c in
      let p = Double(c) / Double(train)
      return h - p * log(p)
    }
    XCTAssertEqual(entropy, 3.29, accuracy: 0.01)
    let e = try XCTUnwrap(run.evaluations.last)
    XCTAssertLessThan(e.loss, entropy - 0.4, "validation loss \(e.loss) vs unigram entropy \(entropy)")
  }
}

// MARK: - Helpers shared by the job-level tests

let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
  .deletingLastPathComponent().path

/// A new folder for one test, removed when the test process exits (a suite run wrote several GB:
/// a GPT-2-small run's checkpoints and spill files), unless HYDRA_KEEP_TEST_FOLDERS is set.
func temporaryFolder() throws -> String {
  let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hydra-test-\(UUID().uuidString)").path
  try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
  TestFolders.shared.add(dir)
  return dir
}

final class TestFolders: @unchecked Sendable {
  static let shared = TestFolders()
  private let lock = NSLock()
  private var folders: [String] = []

  private init() {
    if ProcessInfo.processInfo.environment["HYDRA_KEEP_TEST_FOLDERS"] == nil {
      atexit { TestFolders.shared.removeAll() }
    }
  }

  func add(_ folder: String) {
    lock.lock()
    folders.append(folder)
    lock.unlock()
  }

  func removeAll() {
    lock.lock()
    let all = folders
    folders.removeAll()
    lock.unlock()
    for folder in all {
      // A test may leave a file system mounted there (the full-disk test, if it was killed).
      _ = umount2(folder + "/parts/out", Int32(MNT_DETACH))
      try? FileManager.default.removeItem(atPath: folder)
    }
  }
}

func writeJob(_ dir: String, _ text: String, name: String = "job.toml") throws -> String {
  let path = dir + "/" + name
  try text.write(toFile: path, atomically: true, encoding: .utf8)
  return path
}

func testRegistry() -> PluginRegistry { Builtins.registry() }

func testKnownPlugins() -> KnownPlugins { Builtins.known() }

/// Runs a job and checks its memory plan held, as every run must: no device went past its budget,
/// the host store's RAM stayed within `host_memory`, every shard's tasks allocated exactly the
/// working set planned for them, and nothing a model kept between tasks was left in the store.
func runJob(
  _ path: String, overrides: [String] = [], file: StaticString = #filePath, line: UInt = #line
) throws -> JobRunner.Result {
  let config = try JobConfig.load(path: path, known: testKnownPlugins(), overrides: overrides)
  // Tests run one job after another into one folder: each starts afresh (the tool would refuse).
  try? FileManager.default.removeItem(atPath: config.job.output)
  let runner = JobRunner(config: config, registry: testRegistry())
  runner.log = { _ in }
  let result = try runner.run()
  checkMemoryPlan(result, label: "\(overrides)", file: file, line: line)
  return result
}

func checkMemoryPlan(_ result: JobRunner.Result, label: String, file: StaticString = #filePath, line: UInt = #line) {
  for d in result.devices {
    XCTAssertLessThanOrEqual(d.memory.peak, d.memory.budget, "device \(d.index) peak, \(label)", file: file, line: line)
    XCTAssertEqual(
      d.memory.used - result.store.residentOn(device: d.index), 0,
      "device \(d.index) holds more than shard states at the end, \(label)", file: file, line: line)
  }
  XCTAssertLessThanOrEqual(
    result.store.peakBytes, result.store.memory.budget, "host store peak, \(label)", file: file, line: line)
  XCTAssertEqual(result.store.heldEntries, 0, "tensors left in the host store, \(label)", file: file, line: line)
  for run in result.runs where run.status == .done && run.step > 0 {
    XCTAssertEqual(
      run.measuredWorkingSets, run.workingSets, "\(run.id): measured against planned working sets, \(label)",
      file: file, line: line)
  }
}
