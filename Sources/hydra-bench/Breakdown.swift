import CBLAS
import Foundation
import HydraCore
import HydraKernelsCPU
import HydraRuntime

/// `hydra-bench breakdown [steps] [threads...]`: where a training step's time goes. Each case trains
/// through `TimedKernels`, which times every kernel call by kind; the step time not spent in a
/// kernel is the runtime's own (task bookkeeping, allocation). The products' own efficiency is
/// their FLOP/s against OpenBLAS's 1024^3 sgemm rate at the same threads: an MFU ceiling for the
/// model's shapes.
enum Breakdown {
  static func run(steps: Int, threadCounts: [Int]) throws {
    print(
      "hydra-bench breakdown: \(steps) steps (after 2 warm-up steps) per case; share of the step time by kernel kind")
    for threads in threadCounts {
      let cpu = CPUKernels(threads: threads)
      let sgemm = Bench.sgemmRate(threads: threads)
      openblas_set_num_threads(1)
      usleep(300_000)
      print(String(format: "threads %d: sgemm 1024^3 %.1f GFLOP/s", threads, sgemm / 1e9))
      for c in Bench.cases {
        let timed = TimedKernels(cpu)
        let run = try Bench.makeRun(c, kernels: timed, steps: steps + 2)
        _ = try Bench.timeSteps(run, kernels: timed, steps: 2)
        timed.reset()
        let times = try Bench.timeSteps(run, kernels: timed, steps: steps)
        let total = times.reduce(0, +)
        let kinds = timed.seconds
        let inKernels = kinds.values.reduce(0, +)
        var parts = kinds.sorted { $0.value > $1.value }.map {
          String(format: "%@ %.1f%%", $0.key, 100 * $0.value / total)
        }
        parts.append(String(format: "runtime %.1f%%", 100 * (total - inKernels) / total))
        let gemmSeconds = (kinds["gemm"] ?? 0) + (kinds["gemm-batched"] ?? 0)
        let gemmRate = timed.gemmFlops / max(gemmSeconds, 1e-12)
        print(
          String(
            format: "  %@: step %.4f s; products at %.2f of sgemm 1024^3; %@",
            c.label.padding(toLength: 31, withPad: " ", startingAt: 0), total / Double(steps), gemmRate / sgemm,
            parts.joined(separator: ", ")))
      }
    }
  }
}

/// Kernels that time every call of another's, by kind (`gemm`, `attention`, `elementwise`, ...),
/// and count the products' FLOPs. Forwarding only: the bits are the wrapped kernels'.
final class TimedKernels: Kernels {
  let inner: Kernels
  private(set) var seconds: [String: Double] = [:]
  private(set) var gemmFlops = 0.0
  init(_ inner: Kernels) { self.inner = inner }
  var name: String { inner.name }
  var threads: Int { inner.threads }
  var memory: DeviceMemory { inner.memory }

  func reset() {
    seconds = [:]
    gemmFlops = 0
  }

  @inline(__always) private func time<R>(_ kind: String, _ body: () -> R) -> R {
    let start = DispatchTime.now().uptimeNanoseconds
    let r = body()
    seconds[kind, default: 0] += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    return r
  }

  func gemm(
    transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
    b: UnsafePointer<Float>, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
  ) {
    gemmFlops += 2 * Double(m) * Double(n) * Double(k)
    time("gemm") {
      inner.gemm(
        transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta,
        c: c,
        ldc: ldc)
    }
  }
  func gemmBatched(
    transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int, strideA: Int,
    b: UnsafePointer<Float>, ldb: Int, strideB: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int,
    strideC: Int, batch: Int
  ) {
    gemmFlops += 2 * Double(m) * Double(n) * Double(k) * Double(batch)
    time("gemm-batched") {
      inner.gemmBatched(
        transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, strideA: strideA, b: b,
        ldb: ldb,
        strideB: strideB, beta: beta, c: c, ldc: ldc, strideC: strideC, batch: batch)
    }
  }
  func addBias(_ y: UnsafeMutablePointer<Float>, bias: UnsafePointer<Float>, rows: Int, cols: Int) {
    time("bias") { inner.addBias(y, bias: bias, rows: rows, cols: cols) }
  }
  func setBias(
    _ y: UnsafeMutablePointer<Float>, bias: UnsafePointer<Float>, plus x: UnsafePointer<Float>?, rows: Int,
    cols: Int
  ) {
    time("bias") { inner.setBias(y, bias: bias, plus: x, rows: rows, cols: cols) }
  }
  func accumulateBiasGradient(_ dy: UnsafePointer<Float>, rows: Int, cols: Int, into dbias: UnsafeMutablePointer<Float>)
  {
    time("bias") { inner.accumulateBiasGradient(dy, rows: rows, cols: cols, into: dbias) }
  }
  func geluForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
    time("activation") { inner.geluForward(x, y, count: count) }
  }
  func geluBackward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, count: Int
  ) {
    time("activation") { inner.geluBackward(x, dy, dx, count: count) }
  }
  func geluForwardBackward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
    dx: UnsafeMutablePointer<Float>, count: Int
  ) {
    time("activation") { inner.geluForwardBackward(x, dy, y: y, dx: dx, count: count) }
  }
  func reluForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
    time("activation") { inner.reluForward(x, y, count: count) }
  }
  func reluBackward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, count: Int
  ) {
    time("activation") { inner.reluBackward(x, dy, dx, count: count) }
  }
  func layerNormForward(
    _ x: UnsafePointer<Float>, gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>,
    _ y: UnsafeMutablePointer<Float>,
    mean: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>, rows: Int, cols: Int, eps: Float
  ) {
    time("layernorm") {
      inner.layerNormForward(x, gamma: gamma, beta: beta, y, mean: mean, rstd: rstd, rows: rows, cols: cols, eps: eps)
    }
  }
  func layerNormBackward(
    _ dy: UnsafePointer<Float>, _ x: UnsafePointer<Float>, gamma: UnsafePointer<Float>, mean: UnsafePointer<Float>,
    rstd: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, dgamma: UnsafeMutablePointer<Float>,
    dbeta: UnsafeMutablePointer<Float>, rows: Int, cols: Int
  ) {
    time("layernorm") {
      inner.layerNormBackward(
        dy, x, gamma: gamma, mean: mean, rstd: rstd, dx: dx, dgamma: dgamma, dbeta: dbeta, rows: rows, cols: cols)
    }
  }
  func attentionForward(
    qkv: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, probs: UnsafeMutablePointer<Float>, batch: Int,
    seq: Int, channels: Int, heads: Int
  ) {
    time("attention") {
      inner.attentionForward(qkv: qkv, out: out, probs: probs, batch: batch, seq: seq, channels: channels, heads: heads)
    }
  }
  func attentionBackward(
    dout: UnsafePointer<Float>, qkv: UnsafePointer<Float>, probs: UnsafePointer<Float>,
    dqkv: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>, batch: Int, seq: Int, channels: Int,
    heads: Int
  ) {
    time("attention") {
      inner.attentionBackward(
        dout: dout, qkv: qkv, probs: probs, dqkv: dqkv, scratch: scratch, batch: batch, seq: seq, channels: channels,
        heads: heads)
    }
  }
  func embeddingForward(
    tokens: UnsafePointer<Int32>, wte: UnsafePointer<Float>, wpe: UnsafePointer<Float>,
    out: UnsafeMutablePointer<Float>,
    batch: Int, seq: Int, channels: Int
  ) {
    time("embedding") {
      inner.embeddingForward(tokens: tokens, wte: wte, wpe: wpe, out: out, batch: batch, seq: seq, channels: channels)
    }
  }
  func embeddingBackward(
    dout: UnsafePointer<Float>, tokens: UnsafePointer<Int32>, dwte: UnsafeMutablePointer<Float>,
    dwpe: UnsafeMutablePointer<Float>, batch: Int, seq: Int, channels: Int
  ) {
    time("embedding") {
      inner.embeddingBackward(
        dout: dout, tokens: tokens, dwte: dwte, dwpe: dwpe, batch: batch, seq: seq, channels: channels)
    }
  }
  func softmaxCrossEntropy(
    logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>, rows: Int, classes: Int,
    dlogits: UnsafeMutablePointer<Float>?, gradScale: Float
  ) -> (loss: Double, correct: Int) {
    time("loss") {
      inner.softmaxCrossEntropy(
        logits: logits, targets: targets, rows: rows, classes: classes, dlogits: dlogits, gradScale: gradScale)
    }
  }
  func add(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, count: Int) {
    time("add/copy/fill") { inner.add(a, b, out, count: count) }
  }
  func accumulate(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
    time("add/copy/fill") { inner.accumulate(x, into: y, count: count) }
  }
  func copy(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, count: Int) {
    time("add/copy/fill") { inner.copy(src, dst, count: count) }
  }
  func fill(_ x: UnsafeMutablePointer<Float>, value: Float, count: Int) {
    time("add/copy/fill") { inner.fill(x, value: value, count: count) }
  }
  func scale(_ x: UnsafeMutablePointer<Float>, by factor: Float, count: Int) {
    time("add/copy/fill") { inner.scale(x, by: factor, count: count) }
  }
  func sumOfSquares(_ x: UnsafePointer<Float>, count: Int) -> Double {
    time("add/copy/fill") { inner.sumOfSquares(x, count: count) }
  }
  func sgdStep(
    param: UnsafeMutablePointer<Float>, grad: UnsafePointer<Float>, momentumBuffer: UnsafeMutablePointer<Float>,
    count: Int, lr: Float, momentum: Float, weightDecay: Float, step: Int
  ) {
    time("optimizer") {
      inner.sgdStep(
        param: param, grad: grad, momentumBuffer: momentumBuffer, count: count, lr: lr, momentum: momentum,
        weightDecay: weightDecay, step: step)
    }
  }
  func adamwStep(
    param: UnsafeMutablePointer<Float>, grad: UnsafePointer<Float>, m: UnsafeMutablePointer<Float>,
    v: UnsafeMutablePointer<Float>, count: Int, lr: Float, beta1: Float, beta2: Float, eps: Float, weightDecay: Float,
    step: Int
  ) {
    time("optimizer") {
      inner.adamwStep(
        param: param, grad: grad, m: m, v: v, count: count, lr: lr, beta1: beta1, beta2: beta2, eps: eps,
        weightDecay: weightDecay, step: step)
    }
  }
}
