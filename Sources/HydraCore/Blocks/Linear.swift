/// y(rows, out) = x(rows, in) W + b, the shared step of every dense layer.
///
/// `weightIsOutByIn` picks the stored layout: PyTorch's `nn.Linear` keeps W as (out, in), GPT-2's
/// `Conv1D` as (in, out). Both are products with one transpose flag, never a copy.
struct Dense {
  let inputs: Int
  let outputs: Int
  let weightIsOutByIn: Bool

  /// y = x W + b, plus `residual` (rows, out) where given: y = (residual + b) + x W. The bias and the
  /// residual are in y before the product adds into it (beta 1), so neither takes a pass over y of
  /// its own, nor does a product's clearing of y.
  func forward(
    x: UnsafePointer<Float>, rows: Int, weight: Parameter, bias: Parameter?,
    residual: UnsafePointer<Float>? = nil, y: UnsafeMutablePointer<Float>, kernels: Kernels
  ) {
    var beta: Float = 1
    if let bias {
      kernels.setBias(y, bias: bias.value.data, plus: residual, rows: rows, cols: outputs)
    } else if let residual {
      kernels.copy(residual, y, count: rows * outputs)
    } else {
      beta = 0
    }
    kernels.gemm(
      transA: false, transB: weightIsOutByIn, m: rows, n: outputs, k: inputs, alpha: 1,
      a: x, lda: inputs, b: weight.value.data, ldb: weightIsOutByIn ? inputs : outputs,
      beta: beta, c: y, ldc: outputs)
  }

  /// dW += x^T dy (in the stored layout), db += sum dy, and, if `dx` is given, dx = dy W^T.
  func backward(
    x: UnsafePointer<Float>, dy: UnsafePointer<Float>, rows: Int, weight: Parameter, bias: Parameter?,
    dx: UnsafeMutablePointer<Float>?, kernels: Kernels
  ) {
    parameterGradients(x: x, dy: dy, rows: rows, weight: weight, bias: bias, kernels: kernels)
    if let dx { inputGradient(dy: dy, rows: rows, weight: weight, dx: dx, kernels: kernels) }
  }

  /// dW += x^T dy (in the stored layout), db += sum dy: the half of `backward` that needs x.
  func parameterGradients(
    x: UnsafePointer<Float>, dy: UnsafePointer<Float>, rows: Int, weight: Parameter, bias: Parameter?,
    kernels: Kernels
  ) {
    if weightIsOutByIn {
      // dW(out, in) += dy^T x
      kernels.gemm(
        transA: true, transB: false, m: outputs, n: inputs, k: rows, alpha: 1,
        a: dy, lda: outputs, b: x, ldb: inputs, beta: 1, c: weight.grad.data, ldc: inputs)
    } else {
      // dW(in, out) += x^T dy
      kernels.gemm(
        transA: true, transB: false, m: inputs, n: outputs, k: rows, alpha: 1,
        a: x, lda: inputs, b: dy, ldb: outputs, beta: 1, c: weight.grad.data, ldc: outputs)
    }
    if let bias { kernels.accumulateBiasGradient(dy, rows: rows, cols: outputs, into: bias.grad.data) }
  }

  /// dx = dy W^T: the half of `backward` that does not need x.
  func inputGradient(
    dy: UnsafePointer<Float>, rows: Int, weight: Parameter, dx: UnsafeMutablePointer<Float>, kernels: Kernels
  ) {
    kernels.gemm(
      transA: false, transB: !weightIsOutByIn, m: rows, n: inputs, k: outputs, alpha: 1,
      a: dy, lda: outputs, b: weight.value.data, ldb: weightIsOutByIn ? inputs : outputs,
      beta: 0, c: dx, ldc: inputs)
  }

  var flopsPerRow: Int { 2 * inputs * outputs }
}

let floatBytes = MemoryLayout<Float>.stride
