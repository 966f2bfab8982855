/// The device kernels: everything a training step computes, on raw Float32 buffers.
///
/// Conventions, for every method:
/// - Matrices are row-major. A "(r, c)" buffer has r rows of c contiguous floats unless a leading
///   dimension (`ld*`, elements between row starts) says otherwise.
/// - Outputs are overwritten (`=`) unless the method says it accumulates (`+=`). Parameter gradients
///   always accumulate, so that a block's contributions and a tied weight's two gradients add up.
/// - Results must be deterministic: the same inputs and `threads` give the same bits, every call.
///   The exactness invariant (docs/architecture.md) rests on this.
/// - No method allocates per call; callers pass every scratch buffer.
/// - Every Float pointer is in this device's memory: `Tensor.data` of a tensor charged to `memory`
///   (or to another memory keeping its bytes in the same place). Where the plugin has memory of its
///   own (`memory.buffers`, placed there when the plugin is made), the runtime gets bytes on and off
///   the device only through those buffers' copies. Token and target indices (`Int32`) are host
///   memory.
public protocol Kernels: AnyObject {
  /// The plugin name (`cpu`, `reference`, ...).
  var name: String { get }
  /// Compute threads this device uses (`[cluster] threads_per_device`).
  var threads: Int { get }
  /// The allocator accounting of this device; its `buffers` are the device's own memory (nil: the
  /// kernels compute on host RAM).
  var memory: DeviceMemory { get }

  // MARK: Matrix products

  /// C(m,n) = alpha * op(A) * op(B) + beta * C, with op(A) (m,k) and op(B) (k,n).
  /// A is stored (m,k) or, with `transA`, (k,m); likewise B is (k,n) or (n,k).
  func gemm(
    transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
    a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int)

  /// `batch` independent `gemm`s; matrix i of A starts at a + i * strideA (likewise B and C).
  func gemmBatched(
    transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
    a: UnsafePointer<Float>, lda: Int, strideA: Int,
    b: UnsafePointer<Float>, ldb: Int, strideB: Int,
    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, strideC: Int, batch: Int)

  // MARK: Bias

  /// y(rows, cols) += bias(cols) broadcast over rows.
  func addBias(_ y: UnsafeMutablePointer<Float>, bias: UnsafePointer<Float>, rows: Int, cols: Int)
  /// dbias(cols) += sum over rows of dy(rows, cols).
  func accumulateBiasGradient(
    _ dy: UnsafePointer<Float>, rows: Int, cols: Int, into dbias: UnsafeMutablePointer<Float>)
  /// y(rows, cols) = bias(cols) broadcast over rows, plus x(rows, cols) where given (x + bias,
  /// one rounding). The start of a product that adds into y (`gemm` with beta 1): the bias and a
  /// residual go in with no pass over y of their own. A default composes it of `copy` or `fill`
  /// and `addBias`, with the same bits.
  func setBias(
    _ y: UnsafeMutablePointer<Float>, bias: UnsafePointer<Float>, plus x: UnsafePointer<Float>?, rows: Int,
    cols: Int)

  // MARK: Activations (elementwise over `count`)

  /// y = GELU(x), GPT-2's tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
  func geluForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int)
  /// dx = dy * GELU'(x).
  func geluBackward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
    count: Int)
  /// y = GELU(x) and dx = dy * GELU'(x) in one pass, for a backward that needs GELU's output again
  /// (the next product's weight gradient) as well as its gradient: one evaluation of the exponential
  /// per element instead of two. `dx` may be `dy` (the gradient in place); `y` aliases neither. A
  /// default composes it of `geluForward` and `geluBackward`, with their bits.
  func geluForwardBackward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
    dx: UnsafeMutablePointer<Float>, count: Int)
  /// y = max(x, 0).
  func reluForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int)
  /// dx = x > 0 ? dy : 0.
  func reluBackward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
    count: Int)

  // MARK: LayerNorm over the last dimension

  /// y(rows, cols) = (x - mean) * rstd * gamma + beta, per row; saves mean(rows) and rstd(rows)
  /// with rstd = 1 / sqrt(var + eps) and var the biased variance.
  func layerNormForward(
    _ x: UnsafePointer<Float>, gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>,
    _ y: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>,
    rstd: UnsafeMutablePointer<Float>, rows: Int, cols: Int, eps: Float)
  /// dx(rows, cols) += dL/dx (accumulates: the residual stream's gradient is already in dx);
  /// dgamma(cols) += ..., dbeta(cols) += ...
  func layerNormBackward(
    _ dy: UnsafePointer<Float>, _ x: UnsafePointer<Float>, gamma: UnsafePointer<Float>,
    mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
    dx: UnsafeMutablePointer<Float>, dgamma: UnsafeMutablePointer<Float>,
    dbeta: UnsafeMutablePointer<Float>, rows: Int, cols: Int)

  // MARK: Causal multi-head self-attention

  /// qkv(B, T, 3C) holds per token [q(C) k(C) v(C)], head h in columns h*hs ..< (h+1)*hs of each,
  /// hs = C / heads. For every (b, h): S = q k^T / sqrt(hs) with S[t, u] = -inf for u > t,
  /// P = softmax over u (saved in probs(B, heads, T, T), zeros above the diagonal),
  /// out(B, T, C)[b, :, h*hs ..< (h+1)*hs] = P v.
  func attentionForward(
    qkv: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
    probs: UnsafeMutablePointer<Float>, batch: Int, seq: Int, channels: Int, heads: Int)
  /// dqkv(B, T, 3C) = the gradient of `attentionForward` (overwritten);
  /// `scratch` has room for B * heads * T * T floats.
  func attentionBackward(
    dout: UnsafePointer<Float>, qkv: UnsafePointer<Float>, probs: UnsafePointer<Float>,
    dqkv: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>,
    batch: Int, seq: Int, channels: Int, heads: Int)

  // MARK: Embeddings

  /// out(B*T, C)[i] = wte[tokens[i]] + wpe[i % T]. Tokens are checked by the data layer.
  func embeddingForward(
    tokens: UnsafePointer<Int32>, wte: UnsafePointer<Float>, wpe: UnsafePointer<Float>,
    out: UnsafeMutablePointer<Float>, batch: Int, seq: Int, channels: Int)
  /// dwte[tokens[i]] += dout[i]; dwpe[i % T] += dout[i], rows visited in order i = 0, 1, ...
  func embeddingBackward(
    dout: UnsafePointer<Float>, tokens: UnsafePointer<Int32>,
    dwte: UnsafeMutablePointer<Float>, dwpe: UnsafeMutablePointer<Float>,
    batch: Int, seq: Int, channels: Int)

  // MARK: Loss

  /// Softmax cross-entropy of logits(rows, classes) against targets(rows).
  /// Returns the summed loss (natural log, Double) and the number of rows whose arg-max (first
  /// maximum) equals the target. If `dlogits` is given it is overwritten with
  /// (softmax(logits) - onehot(target)) * gradScale. `dlogits` may be `logits` itself (the
  /// gradient written over the logits, as the loss blocks do).
  func softmaxCrossEntropy(
    logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>, rows: Int, classes: Int,
    dlogits: UnsafeMutablePointer<Float>?, gradScale: Float
  ) -> (loss: Double, correct: Int)

  // MARK: Elementwise and reductions

  /// out = a + b (out may alias a or b).
  func add(
    _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>,
    count: Int)
  /// y += x.
  func accumulate(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int)
  /// dst = src.
  func copy(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, count: Int)
  /// x = value.
  func fill(_ x: UnsafeMutablePointer<Float>, value: Float, count: Int)
  /// x *= factor.
  func scale(_ x: UnsafeMutablePointer<Float>, by factor: Float, count: Int)
  /// sum of x^2, accumulated in Double (global-norm gradient clipping, reporting).
  func sumOfSquares(_ x: UnsafePointer<Float>, count: Int) -> Double

  // MARK: Optimizer updates (in place, elementwise)

  /// SGD with momentum and coupled weight decay (PyTorch's `torch.optim.SGD`, dampening 0):
  /// g = grad + weightDecay * p; buf = momentum * buf + g (buf = g at step 1);
  /// p -= lr * buf. `step` counts from 1.
  func sgdStep(
    param: UnsafeMutablePointer<Float>, grad: UnsafePointer<Float>,
    momentumBuffer: UnsafeMutablePointer<Float>, count: Int,
    lr: Float, momentum: Float, weightDecay: Float, step: Int)

  /// AdamW (PyTorch's `torch.optim.AdamW`): p *= 1 - lr * weightDecay;
  /// m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
  /// p -= lr * (m / (1 - b1^step)) / (sqrt(v / (1 - b2^step)) + eps). `step` counts from 1.
  func adamwStep(
    param: UnsafeMutablePointer<Float>, grad: UnsafePointer<Float>,
    m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>, count: Int,
    lr: Float, beta1: Float, beta2: Float, eps: Float, weightDecay: Float, step: Int)
}

extension Kernels {
  public func geluForwardBackward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
    dx: UnsafeMutablePointer<Float>, count: Int
  ) {
    geluForward(x, y, count: count)
    geluBackward(x, dy, dx, count: count)
  }

  public func setBias(
    _ y: UnsafeMutablePointer<Float>, bias: UnsafePointer<Float>, plus x: UnsafePointer<Float>?, rows: Int,
    cols: Int
  ) {
    if let x { copy(x, y, count: rows * cols) } else { fill(y, value: 0, count: rows * cols) }
    addBias(y, bias: bias, rows: rows, cols: cols)
  }

  /// A tensor charged to this device: zero-filled, or with `zeroed` false holding whatever its
  /// bytes held before (for a buffer that is written whole before it is read: no pass of its own).
  public func allocate(_ shape: [Int], zeroed: Bool = true) throws -> Tensor {
    try Tensor(shape: shape, memory: memory, zeroed: zeroed)
  }
}
