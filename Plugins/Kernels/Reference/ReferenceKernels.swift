import Foundation
import HydraPluginAPI

/// The oracle: every kernel as the plainest loop that states its definition, accumulating in Double
/// where a sum is involved. Slow on purpose; tests compare every other kernels plugin against it.
public final class ReferenceKernels: Kernels {
  public let name = "reference"
  public let threads = 1
  public let memory: DeviceMemory

  public init(memory: DeviceMemory = DeviceMemory()) {
    self.memory = memory
  }

  public func gemm(
    transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
    a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
  ) {
    for i in 0..<m {
      for j in 0..<n {
        var sum = 0.0
        for p in 0..<k {
          let av = transA ? a[p * lda + i] : a[i * lda + p]
          let bv = transB ? b[j * ldb + p] : b[p * ldb + j]
          sum += Double(av) * Double(bv)
        }
        let prior = beta == 0 ? 0 : Double(beta) * Double(c[i * ldc + j])
        c[i * ldc + j] = Float(Double(alpha) * sum + prior)
      }
    }
  }

  public func gemmBatched(
    transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
    a: UnsafePointer<Float>, lda: Int, strideA: Int,
    b: UnsafePointer<Float>, ldb: Int, strideB: Int,
    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, strideC: Int, batch: Int
  ) {
    for i in 0..<batch {
      gemm(
        transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
        a: a + i * strideA, lda: lda, b: b + i * strideB, ldb: ldb,
        beta: beta, c: c + i * strideC, ldc: ldc)
    }
  }

  public func addBias(_ y: UnsafeMutablePointer<Float>, bias: UnsafePointer<Float>, rows: Int, cols: Int) {
    for r in 0..<rows { for c in 0..<cols { y[r * cols + c] += bias[c] } }
  }

  public func setBias(
    _ y: UnsafeMutablePointer<Float>, bias: UnsafePointer<Float>, plus x: UnsafePointer<Float>?, rows: Int,
    cols: Int
  ) {
    for r in 0..<rows { for c in 0..<cols { y[r * cols + c] = (x?[r * cols + c] ?? 0) + bias[c] } }
  }

  public func accumulateBiasGradient(
    _ dy: UnsafePointer<Float>, rows: Int, cols: Int, into dbias: UnsafeMutablePointer<Float>
  ) {
    for c in 0..<cols {
      var sum = 0.0
      for r in 0..<rows { sum += Double(dy[r * cols + c]) }
      dbias[c] = Float(Double(dbias[c]) + sum)
    }
  }

  static let geluScale = (2.0 / Double.pi).squareRoot()

  public func geluForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
    for i in 0..<count {
      let v = Double(x[i])
      y[i] = Float(0.5 * v * (1 + tanh(Self.geluScale * (v + 0.044715 * v * v * v))))
    }
  }

  public func geluBackward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
    count: Int
  ) {
    for i in 0..<count {
      let v = Double(x[i])
      let u = Self.geluScale * (v + 0.044715 * v * v * v)
      let t = tanh(u)
      let du = Self.geluScale * (1 + 3 * 0.044715 * v * v)
      let grad = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * du
      dx[i] = Float(grad * Double(dy[i]))
    }
  }

  public func reluForward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
    for i in 0..<count { y[i] = x[i] > 0 ? x[i] : 0 }
  }

  public func reluBackward(
    _ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>,
    count: Int
  ) {
    for i in 0..<count { dx[i] = x[i] > 0 ? dy[i] : 0 }
  }

  public func layerNormForward(
    _ x: UnsafePointer<Float>, gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>,
    _ y: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>,
    rstd: UnsafeMutablePointer<Float>, rows: Int, cols: Int, eps: Float
  ) {
    for r in 0..<rows {
      let row = x + r * cols
      var mu = 0.0
      for c in 0..<cols { mu += Double(row[c]) }
      mu /= Double(cols)
      var variance = 0.0
      for c in 0..<cols { variance += (Double(row[c]) - mu) * (Double(row[c]) - mu) }
      variance /= Double(cols)
      let s = 1 / (variance + Double(eps)).squareRoot()
      for c in 0..<cols {
        y[r * cols + c] = Float((Double(row[c]) - mu) * s * Double(gamma[c]) + Double(beta[c]))
      }
      mean[r] = Float(mu)
      rstd[r] = Float(s)
    }
  }

  public func layerNormBackward(
    _ dy: UnsafePointer<Float>, _ x: UnsafePointer<Float>, gamma: UnsafePointer<Float>,
    mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
    dx: UnsafeMutablePointer<Float>, dgamma: UnsafeMutablePointer<Float>,
    dbeta: UnsafeMutablePointer<Float>, rows: Int, cols: Int
  ) {
    // With xhat = (x - mean) * rstd and g = dy * gamma:
    // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
    for r in 0..<rows {
      let mu = Double(mean[r]), s = Double(rstd[r])
      var meanG = 0.0, meanGX = 0.0
      for c in 0..<cols {
        let xhat = (Double(x[r * cols + c]) - mu) * s
        let g = Double(dy[r * cols + c]) * Double(gamma[c])
        meanG += g
        meanGX += g * xhat
      }
      meanG /= Double(cols)
      meanGX /= Double(cols)
      for c in 0..<cols {
        let xhat = (Double(x[r * cols + c]) - mu) * s
        let g = Double(dy[r * cols + c]) * Double(gamma[c])
        dx[r * cols + c] = Float(Double(dx[r * cols + c]) + s * (g - meanG - xhat * meanGX))
      }
    }
    for c in 0..<cols {
      var sg = 0.0, sb = 0.0
      for r in 0..<rows {
        let xhat = (Double(x[r * cols + c]) - Double(mean[r])) * Double(rstd[r])
        sg += Double(dy[r * cols + c]) * xhat
        sb += Double(dy[r * cols + c])
      }
      dgamma[c] = Float(Double(dgamma[c]) + sg)
      dbeta[c] = Float(Double(dbeta[c]) + sb)
    }
  }

  public func attentionForward(
    qkv: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
    probs: UnsafeMutablePointer<Float>, batch: Int, seq: Int, channels: Int, heads: Int
  ) {
    let T = seq, C = channels, hs = C / heads
    let scale = 1 / Double(hs).squareRoot()
    for b in 0..<batch {
      for h in 0..<heads {
        let p = probs + (b * heads + h) * T * T
        for t in 0..<T {
          let q = qkv + (b * T + t) * 3 * C + h * hs
          var scores = [Double](repeating: 0, count: t + 1)
          var top = -Double.infinity
          for u in 0...t {
            let k = qkv + (b * T + u) * 3 * C + C + h * hs
            var dot = 0.0
            for i in 0..<hs { dot += Double(q[i]) * Double(k[i]) }
            scores[u] = dot * scale
            top = max(top, scores[u])
          }
          var total = 0.0
          for u in 0...t {
            scores[u] = exp(scores[u] - top)
            total += scores[u]
          }
          for u in 0..<T { p[t * T + u] = u <= t ? Float(scores[u] / total) : 0 }
          let o = out + (b * T + t) * C + h * hs
          for i in 0..<hs {
            var sum = 0.0
            for u in 0...t {
              sum += Double(p[t * T + u]) * Double(qkv[(b * T + u) * 3 * C + 2 * C + h * hs + i])
            }
            o[i] = Float(sum)
          }
        }
      }
    }
  }

  public func attentionBackward(
    dout: UnsafePointer<Float>, qkv: UnsafePointer<Float>, probs: UnsafePointer<Float>,
    dqkv: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>,
    batch: Int, seq: Int, channels: Int, heads: Int
  ) {
    let T = seq, C = channels, hs = C / heads
    let scale = 1 / Double(hs).squareRoot()
    var acc = [Double](repeating: 0, count: batch * T * 3 * C)
    func at(_ b: Int, _ t: Int, _ part: Int, _ h: Int, _ i: Int) -> Int {
      (b * T + t) * 3 * C + part * C + h * hs + i
    }
    for b in 0..<batch {
      for h in 0..<heads {
        let p = probs + (b * heads + h) * T * T
        for t in 0..<T {
          let dO = dout + (b * T + t) * C + h * hs
          // dP[t, u] = dO[t] . v[u]; dv[u] += P[t, u] dO[t]
          var dP = [Double](repeating: 0, count: t + 1)
          for u in 0...t {
            var dot = 0.0
            for i in 0..<hs {
              dot += Double(dO[i]) * Double(qkv[at(b, u, 2, h, i)])
              acc[at(b, u, 2, h, i)] += Double(p[t * T + u]) * Double(dO[i])
            }
            dP[u] = dot
          }
          // dS[t, u] = P[t, u] (dP[t, u] - sum_w P[t, w] dP[t, w])
          var inner = 0.0
          for u in 0...t { inner += Double(p[t * T + u]) * dP[u] }
          for u in 0...t {
            let dS = Double(p[t * T + u]) * (dP[u] - inner) * scale
            for i in 0..<hs {
              acc[at(b, t, 0, h, i)] += dS * Double(qkv[at(b, u, 1, h, i)])
              acc[at(b, u, 1, h, i)] += dS * Double(qkv[at(b, t, 0, h, i)])
            }
          }
        }
      }
    }
    for i in 0..<acc.count { dqkv[i] = Float(acc[i]) }
  }

  public func embeddingForward(
    tokens: UnsafePointer<Int32>, wte: UnsafePointer<Float>, wpe: UnsafePointer<Float>,
    out: UnsafeMutablePointer<Float>, batch: Int, seq: Int, channels: Int
  ) {
    for i in 0..<batch * seq {
      let tok = Int(tokens[i]), pos = i % seq
      for c in 0..<channels {
        out[i * channels + c] = wte[tok * channels + c] + wpe[pos * channels + c]
      }
    }
  }

  public func embeddingBackward(
    dout: UnsafePointer<Float>, tokens: UnsafePointer<Int32>,
    dwte: UnsafeMutablePointer<Float>, dwpe: UnsafeMutablePointer<Float>,
    batch: Int, seq: Int, channels: Int
  ) {
    for i in 0..<batch * seq {
      let tok = Int(tokens[i]), pos = i % seq
      for c in 0..<channels {
        dwte[tok * channels + c] += dout[i * channels + c]
        dwpe[pos * channels + c] += dout[i * channels + c]
      }
    }
  }

  public func softmaxCrossEntropy(
    logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>, rows: Int, classes: Int,
    dlogits: UnsafeMutablePointer<Float>?, gradScale: Float
  ) -> (loss: Double, correct: Int) {
    var loss = 0.0
    var correct = 0
    for r in 0..<rows {
      let row = logits + r * classes
      var top = -Double.infinity
      var best = 0
      for c in 0..<classes where Double(row[c]) > top {
        top = Double(row[c])
        best = c
      }
      var total = 0.0
      for c in 0..<classes { total += exp(Double(row[c]) - top) }
      let target = Int(targets[r])
      loss += log(total) - (Double(row[target]) - top)
      if best == target { correct += 1 }
      if let d = dlogits {
        for c in 0..<classes {
          let p = exp(Double(row[c]) - top) / total
          d[r * classes + c] = Float((p - (c == target ? 1 : 0)) * Double(gradScale))
        }
      }
    }
    return (loss, correct)
  }

  public func add(
    _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>,
    count: Int
  ) {
    for i in 0..<count { out[i] = a[i] + b[i] }
  }

  public func accumulate(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
    for i in 0..<count { y[i] += x[i] }
  }

  public func copy(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, count: Int) {
    for i in 0..<count { dst[i] = src[i] }
  }

  public func fill(_ x: UnsafeMutablePointer<Float>, value: Float, count: Int) {
    for i in 0..<count { x[i] = value }
  }

  public func scale(_ x: UnsafeMutablePointer<Float>, by factor: Float, count: Int) {
    for i in 0..<count { x[i] *= factor }
  }

  public func sumOfSquares(_ x: UnsafePointer<Float>, count: Int) -> Double {
    var sum = 0.0
    for i in 0..<count { sum += Double(x[i]) * Double(x[i]) }
    return sum
  }

  public func sgdStep(
    param: UnsafeMutablePointer<Float>, grad: UnsafePointer<Float>,
    momentumBuffer: UnsafeMutablePointer<Float>, count: Int,
    lr: Float, momentum: Float, weightDecay: Float, step: Int
  ) {
    for i in 0..<count {
      let g = grad[i] + weightDecay * param[i]
      momentumBuffer[i] = step == 1 ? g : momentum * momentumBuffer[i] + g
      param[i] -= lr * momentumBuffer[i]
    }
  }

  public func adamwStep(
    param: UnsafeMutablePointer<Float>, grad: UnsafePointer<Float>,
    m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>, count: Int,
    lr: Float, beta1: Float, beta2: Float, eps: Float, weightDecay: Float, step: Int
  ) {
    let c1 = 1 - pow(Double(beta1), Double(step))
    let c2 = 1 - pow(Double(beta2), Double(step))
    for i in 0..<count {
      let g = Double(grad[i])
      param[i] = Float(Double(param[i]) * (1 - Double(lr) * Double(weightDecay)))
      m[i] = Float(Double(beta1) * Double(m[i]) + (1 - Double(beta1)) * g)
      v[i] = Float(Double(beta2) * Double(v[i]) + (1 - Double(beta2)) * g * g)
      let mhat = Double(m[i]) / c1
      let vhat = Double(v[i]) / c2
      param[i] = Float(Double(param[i]) - Double(lr) * mhat / (vhat.squareRoot() + Double(eps)))
    }
  }
}
