import CBLAS
import Foundation
import HydraBackendSHM
import HydraCore
import HydraKernelsCPU
import HydraRuntime

/// `hydra-bench`: training-step speed of the cpu kernels at several thread counts, as a fraction of
/// OpenBLAS's own (multi-threaded) sgemm rate measured in the same run at the same thread count
/// (MFU), and the speed-up of each thread count over one thread.
///
/// Usage: `hydra-bench [steps] [threads...]` (default: 10 steps; 1, 2 and, where the machine has
/// them, 4, 8, 16 threads); `HYDRA_BENCH_ROUNDS=n` (default 3) repeats the measurement in n rounds
/// that visit every thread count in turn, so that a burst of load from other processes falls on all
/// of them; the figures are medians over the rounds. `hydra-bench shards [steps]`: the cost of
/// shards, spilling and double buffering. `hydra-bench breakdown [steps] [threads...]`: where a
/// step's time goes, by kernel kind.
@main
struct Bench {
  /// A model of the benchmark: its spec and batch.
  struct Case {
    let label: String
    let spec: ModelSpec
    let batch: Int
  }

  /// The cases run: every default one, or those whose label starts with one of the
  /// comma-separated prefixes in `HYDRA_BENCH_CASES` (`gpt2-small` is run only when named: one
  /// step of it takes seconds).
  static var cases: [Case] {
    guard let names = ProcessInfo.processInfo.environment["HYDRA_BENCH_CASES"], !names.isEmpty else {
      return defaultCases
    }
    let prefixes = names.split(separator: ",").map(String.init)
    return (defaultCases + [gpt2Small]).filter { c in prefixes.contains { c.label.hasPrefix($0) } }
  }

  /// A GPT-2-small-shaped model (124M parameters) at the batch and context of Examples/gpt2-sweep.
  static let gpt2Small = Case(
    label: "gpt2-small L12 C768 H12 T256 B2",
    spec: .gpt(GPTShape(layers: 12, channels: 768, heads: 12, context: 256, vocab: 50257)), batch: 2)

  static let defaultCases = [
    Case(
      label: "gpt  L6 C384 H6 T128 B8",
      spec: .gpt(GPTShape(layers: 6, channels: 384, heads: 6, context: 128, vocab: 256)), batch: 8),
    // One GPT-2-small block (d_model 768, 12 heads, head size 64) at context 256.
    Case(
      label: "gpt2-block L1 C768 H12 T256 B4",
      spec: .gpt(GPTShape(layers: 1, channels: 768, heads: 12, context: 256, vocab: 256)), batch: 4),
    // The models of Scripts/bench-ranks (and bench-mpi's 8-model job): small products, where the
    // threads of one device gain least.
    Case(
      label: "gpt-small L4 C128 H4 T64 B16",
      spec: .gpt(GPTShape(layers: 4, channels: 128, heads: 4, context: 64, vocab: 256)), batch: 16),
    Case(
      label: "mlp  1024-2048-2048-10 B256", spec: .mlp(inputs: 1024, hidden: [2048, 2048], classes: 10), batch: 256),
  ]

  static func main() throws {
    BLASCore.restartWithBetterCoreIfNeeded()
    var args = CommandLine.arguments.dropFirst()
    if args.first == "breakdown" {
      args = args.dropFirst()
      let threads = args.dropFirst().compactMap(Int.init)
      try Breakdown.run(steps: args.first.flatMap(Int.init) ?? 5, threadCounts: threads.isEmpty ? [1, 2] : threads)
      return
    }
    if args.first == "shards" {
      args = args.dropFirst()
      try ShardBench.run(steps: args.first.flatMap(Int.init) ?? 10)
      return
    }
    let steps = args.first.flatMap(Int.init) ?? 10
    let cores = ProcessInfo.processInfo.activeProcessorCount
    let threadCounts =
      args.count > 1 ? args.dropFirst().compactMap(Int.init) : [1, 2, 4, 8, 16].filter { $0 == 1 || $0 <= cores }
    let rounds = max(1, ProcessInfo.processInfo.environment["HYDRA_BENCH_ROUNDS"].flatMap(Int.init) ?? 3)
    print(
      "hydra-bench: \(rounds) round(s) of \(steps) steps (after 2 warm-up steps) per model and thread count; "
        + "\(cores) cores; OpenBLAS \(CPUKernels.blasCoreName) kernels")
    print(
      "  MFU = model FLOP/s / OpenBLAS's own sgemm FLOP/s (1024^3, its pool at the same threads); medians over rounds")

    // One kernels instance and one training run per (threads, case), kept across rounds.
    var kernels: [Int: CPUKernels] = [:]
    var runs: [Int: [ModelRun]] = [:]
    for threads in threadCounts {
      let k = CPUKernels(threads: threads)
      kernels[threads] = k
      runs[threads] = try cases.map { try makeRun($0, kernels: k, steps: rounds * steps + 2) }
    }
    // [threads][case] -> per-round median step time; [threads] -> per-round sgemm rate.
    var stepTimes: [Int: [[Double]]] = [:]
    var sgemmRates: [Int: [Double]] = [:]
    for round in 0..<rounds {
      for threads in threadCounts {
        sgemmRates[threads, default: []].append(sgemmRate(threads: threads))
        // OpenBLAS's own pool spins for a while after its last call: let it go to sleep before the
        // kernels (which keep OpenBLAS at one thread) are timed.
        openblas_set_num_threads(1)
        usleep(300_000)
        for (c, run) in runs[threads]!.enumerated() {
          var times = try timeSteps(run, kernels: kernels[threads]!, steps: steps + (round == 0 ? 2 : 0))
          if round == 0 { times.removeFirst(2) }
          stepTimes[threads, default: Array(repeating: [], count: cases.count)][c].append(median(times))
        }
      }
    }

    let one = threadCounts.first ?? 1
    for threads in threadCounts {
      let sgemm = median(sgemmRates[threads]!)
      let sgemmOne = median(sgemmRates[one]!)
      print(
        String(
          format: "threads %d: sgemm 1024^3 %.1f GFLOP/s (x%.2f of %d thread%@)", threads, sgemm / 1e9,
          sgemm / sgemmOne,
          one, one == 1 ? "" : "s"))
      for (c, spec) in cases.enumerated() {
        let flops = modelFlopsPerStep(spec.spec, batch: spec.batch)
        let perRound = stepTimes[threads]![c]
        let step = median(perRound)
        let mfu = median(zip(perRound, sgemmRates[threads]!).map { flops / $0 / $1 })
        let speedup = median(stepTimes[one]![c]) / step
        print(
          String(
            format: "  %@: step %.4f s, %.2f GFLOP/step, %.1f GFLOP/s, MFU %.2f, x%.2f of %d thread%@",
            spec.label.padding(toLength: 31, withPad: " ", startingAt: 0), step, flops / 1e9, flops / step / 1e9, mfu,
            speedup, one, one == 1 ? "" : "s"))
      }
    }
  }

  static func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted.isEmpty ? .nan : sorted[sorted.count / 2]
  }

  static func makeRun(_ c: Case, kernels: Kernels, steps: Int) throws -> ModelRun {
    let optimizer = Optimizer(kind: .adamw, lr: 1e-4, totalSteps: steps)
    return try ModelRun(
      index: 0, id: "bench", spec: c.spec, seed: 1,
      settings: TrainSettings(steps: steps, batchSize: c.batch, optimizer: optimizer),
      data: SyntheticData(spec: c.spec), shards: [0..<c.spec.blockCount], backend: SharedMemoryBackend(devices: 1),
      memory: kernels.memory)
  }

  /// The times of the next `steps` training steps of `run`, in seconds.
  static func timeSteps(_ run: ModelRun, kernels: Kernels, steps: Int) throws -> [Double] {
    var times: [Double] = []
    while times.count < steps, let task = run.nextTask {
      let start = DispatchTime.now().uptimeNanoseconds
      var completed = false
      var t = task
      while !completed {
        completed = try run.run(t, kernels: kernels)
        if !completed { t = run.nextTask! }
      }
      times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
    }
    return times
  }

  /// Median FLOP/s of cblas_sgemm on 1024 x 1024 x 1024 with OpenBLAS's pool at `threads` threads
  /// (15 calls after 3 warm-up calls).
  static func sgemmRate(threads: Int) -> Double {
    openblas_set_num_threads(Int32(threads))
    let n = 1024
    var a = [Float](repeating: 0, count: n * n), b = a, c = a
    for i in 0..<(n * n) {
      a[i] = Float(i % 7) * 0.1
      b[i] = Float(i % 5) * 0.1
    }
    var times: [Double] = []
    for rep in 0..<18 {
      let start = DispatchTime.now().uptimeNanoseconds
      cblas_sgemm(
        CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(n), Int32(n), Int32(n), 1, a, Int32(n), b, Int32(n), 0, &c,
        Int32(n))
      // The first calls pay for page faults and OpenBLAS's buffers: not the rate.
      if rep >= 3 { times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9) }
    }
    return 2 * Double(n * n * n) / median(times)
  }
}

/// Random batches of the right kind for a spec.
final class SyntheticData: BatchSource {
  let spec: ModelSpec
  init(spec: ModelSpec) { self.spec = spec }
  func make(_ seed: UInt64, rows: Int) -> Batch {
    var rng = SplitMix64(seed: seed)
    switch spec {
    case .gpt(let s):
      let n = rows * s.context
      return Batch(
        rows: rows, tokens: (0..<n).map { _ in Int32(rng.nextInt(below: s.vocab)) },
        targets: (0..<n).map { _ in Int32(rng.nextInt(below: s.vocab)) })
    case .mlp(let inputs, _, let classes):
      return Batch(
        rows: rows, features: (0..<(rows * inputs)).map { _ in Float(rng.nextNormal()) },
        targets: (0..<rows).map { _ in Int32(rng.nextInt(below: classes)) })
    }
  }
  /// Four batches, drawn once and taken in turn: drawing 262,144 normal features a step (the MLP)
  /// took 7 % of its step time, which is the benchmark's, not the training's.
  private var drawn: [Int: Batch] = [:]
  func trainBatch(step: Int, batchSize: Int, seed: UInt64, shuffle: Bool) -> Batch {
    let key = (step % 4) * 1_000_003 + batchSize
    if let b = drawn[key] { return b }
    let b = make(derivedSeed(seed, UInt64(step % 4)), rows: batchSize)
    drawn[key] = b
    return b
  }
  func validationBatches(batchSize: Int, limit: Int?) -> [Batch] { [make(3, rows: batchSize)] }
}
