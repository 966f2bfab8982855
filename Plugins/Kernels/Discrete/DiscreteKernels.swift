import HydraKernelsCPU
import HydraPluginAPI

/// The `discrete` kernels: a test device whose memory the host cannot touch, computing exactly as
/// `cpu` does (every call is `cpu`'s, on the same bytes, so the results are bitwise `cpu`'s).
///
/// Its memory is a `DiscreteArena` of its own (placed in `memory`, so every tensor charged to this
/// device lives there): `PROT_NONE` outside the plugin's calls, so any access by the runtime that
/// does not go through the plugin's copies faults, as it would fail on a GPU. The arena counts the
/// copies each way (`traffic`), which `summary.json` reports per device.
public final class DiscreteKernels: Kernels {
  public let name = "discrete"
  public var threads: Int { cpu.threads }
  public var memory: DeviceMemory { cpu.memory }
  /// This device's memory.
  public let arena: DiscreteArena
  let cpu: CPUKernels

  public init(threads: Int = 1, memory: DeviceMemory = DeviceMemory()) {
    cpu = CPUKernels(threads: threads, memory: memory)
    arena = DiscreteArena(label: memory.label)
    memory.place(in: arena)
  }

  public func gemm(
    transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
    b: UnsafePointer<Float>, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
  ) {
    arena.whileOpen {
      cpu.gemm(
        transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta,
        c: c, ldc: ldc)
    }
  }

  public func gemmBatched(
    transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int, strideA: Int,
    b: UnsafePointer<Float>, ldb: Int, strideB: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int,
    strideC: Int, batch: Int
  ) {
    arena.whileOpen {
      cpu.gemmBatched(
        transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, strideA: strideA, b: b,
        ldb: ldb, strideB: strideB, beta: beta, c: c, ldc: ldc, strideC: strideC, batch: batch)
    }
  }

  public func addBias(_ y: UnsafeMutablePointer<Float>, bias: UnsafePointer<Float>, rows: Int, cols: Int) {
    arena.whileOpen { cpu.addBias(y, bias: bias, rows: rows, cols: cols) }
  }

  public func setBias(
    _ y: UnsafeMutablePointer<Float>, bias: UnsafePointer<Float>, plus x: UnsafePointer<Float>?, rows: Int,
    cols: Int
  ) {
    arena.whileOpen { cpu.setBias(y, bias: bias, plus: x, rows: rows, cols: cols) }
  }

  public func accumulateBiasGradient(
    _ dy: UnsafePointer<Float>, rows: Int, cols: Int, into dbias: UnsafeMutablePointer<Float>
  ) {
    arena.whileOpen { cpu.accumulateBiasGradient(dy, rows: rows, cols: cols, into: dbias) }
  }

  public func geluForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
    arena.whileOpen { cpu.geluForward(x, y, count: count) }
  }

  public func geluBackward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, count: Int
  ) {
    arena.whileOpen { cpu.geluBackward(x, dy, dx, count: count) }
  }

  public func geluForwardBackward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
    dx: UnsafeMutablePointer<Float>, count: Int
  ) {
    arena.whileOpen { cpu.geluForwardBackward(x, dy, y: y, dx: dx, count: count) }
  }

  public func reluForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
    arena.whileOpen { cpu.reluForward(x, y, count: count) }
  }

  public func reluBackward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, count: Int
  ) {
    arena.whileOpen { cpu.reluBackward(x, dy, dx, count: count) }
  }

  public func layerNormForward(
    _ x: UnsafePointer<Float>, gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>,
    _ y: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>, rows: Int,
    cols: Int, eps: Float
  ) {
    arena.whileOpen {
      cpu.layerNormForward(x, gamma: gamma, beta: beta, y, mean: mean, rstd: rstd, rows: rows, cols: cols, eps: eps)
    }
  }

  public func layerNormBackward(
    _ dy: UnsafePointer<Float>, _ x: UnsafePointer<Float>, gamma: UnsafePointer<Float>, mean: UnsafePointer<Float>,
    rstd: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, dgamma: UnsafeMutablePointer<Float>,
    dbeta: UnsafeMutablePointer<Float>, rows: Int, cols: Int
  ) {
    arena.whileOpen {
      cpu.layerNormBackward(
        dy, x, gamma: gamma, mean: mean, rstd: rstd, dx: dx, dgamma: dgamma, dbeta: dbeta, rows: rows, cols: cols)
    }
  }

  public func attentionForward(
    qkv: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, probs: UnsafeMutablePointer<Float>, batch: Int,
    seq: Int, channels: Int, heads: Int
  ) {
    arena.whileOpen {
      cpu.attentionForward(qkv: qkv, out: out, probs: probs, batch: batch, seq: seq, channels: channels, heads: heads)
    }
  }

  public func attentionBackward(
    dout: UnsafePointer<Float>, qkv: UnsafePointer<Float>, probs: UnsafePointer<Float>,
    dqkv: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>, batch: Int, seq: Int, channels: Int,
    heads: Int
  ) {
    arena.whileOpen {
      cpu.attentionBackward(
        dout: dout, qkv: qkv, probs: probs, dqkv: dqkv, scratch: scratch, batch: batch, seq: seq, channels: channels,
        heads: heads)
    }
  }

  public func embeddingForward(
    tokens: UnsafePointer<Int32>, wte: UnsafePointer<Float>, wpe: UnsafePointer<Float>,
    out: UnsafeMutablePointer<Float>, batch: Int, seq: Int, channels: Int
  ) {
    arena.whileOpen {
      cpu.embeddingForward(tokens: tokens, wte: wte, wpe: wpe, out: out, batch: batch, seq: seq, channels: channels)
    }
  }

  public func embeddingBackward(
    dout: UnsafePointer<Float>, tokens: UnsafePointer<Int32>, dwte: UnsafeMutablePointer<Float>,
    dwpe: UnsafeMutablePointer<Float>, batch: Int, seq: Int, channels: Int
  ) {
    arena.whileOpen {
      cpu.embeddingBackward(
        dout: dout, tokens: tokens, dwte: dwte, dwpe: dwpe, batch: batch, seq: seq, channels: channels)
    }
  }

  public func softmaxCrossEntropy(
    logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>, rows: Int, classes: Int,
    dlogits: UnsafeMutablePointer<Float>?, gradScale: Float
  ) -> (loss: Double, correct: Int) {
    arena.whileOpen {
      return cpu.softmaxCrossEntropy(
        logits: logits, targets: targets, rows: rows, classes: classes, dlogits: dlogits, gradScale: gradScale)
    }
  }

  public func add(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, count: Int)
  {
    arena.whileOpen { cpu.add(a, b, out, count: count) }
  }

  public func accumulate(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
    arena.whileOpen { cpu.accumulate(x, into: y, count: count) }
  }

  public func copy(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, count: Int) {
    arena.whileOpen { cpu.copy(src, dst, count: count) }
  }

  public func fill(_ x: UnsafeMutablePointer<Float>, value: Float, count: Int) {
    arena.whileOpen { cpu.fill(x, value: value, count: count) }
  }

  public func scale(_ x: UnsafeMutablePointer<Float>, by factor: Float, count: Int) {
    arena.whileOpen { cpu.scale(x, by: factor, count: count) }
  }

  public func sumOfSquares(_ x: UnsafePointer<Float>, count: Int) -> Double {
    arena.whileOpen { return cpu.sumOfSquares(x, count: count) }
  }

  public func sgdStep(
    param: UnsafeMutablePointer<Float>, grad: UnsafePointer<Float>, momentumBuffer: UnsafeMutablePointer<Float>,
    count: Int, lr: Float, momentum: Float, weightDecay: Float, step: Int
  ) {
    arena.whileOpen {
      cpu.sgdStep(
        param: param, grad: grad, momentumBuffer: momentumBuffer, count: count, lr: lr, momentum: momentum,
        weightDecay: weightDecay, step: step)
    }
  }

  public func adamwStep(
    param: UnsafeMutablePointer<Float>, grad: UnsafePointer<Float>, m: UnsafeMutablePointer<Float>,
    v: UnsafeMutablePointer<Float>, count: Int, lr: Float, beta1: Float, beta2: Float, eps: Float, weightDecay: Float,
    step: Int
  ) {
    arena.whileOpen {
      cpu.adamwStep(
        param: param, grad: grad, m: m, v: v, count: count, lr: lr, beta1: beta1, beta2: beta2, eps: eps,
        weightDecay: weightDecay, step: step)
    }
  }
}
