import Foundation
import HydraBuiltins
import HydraKernelsReference
import HydraRuntime
import XCTest

@testable import HydraPluginLoader

/// The flags `Examples/Plugins/kernels-c/build.sh` compiles with.
let cLoopsFlags = ["-D_DEFAULT_SOURCE", "-ffp-contract=off", "-lm"]

/// Host arrays put on a plugin's device and read back, through the plugin's copies alone; every
/// buffer is freed with the test.
final class DeviceArrays {
  let buffers: DeviceBuffers
  private var live: [(UnsafeMutableRawPointer, Int)] = []
  private(set) var puts = 0
  init(_ buffers: DeviceBuffers) { self.buffers = buffers }
  deinit { for (p, bytes) in live { buffers.deallocate(p, byteCount: bytes) } }

  func put(_ values: [Float]) -> UnsafeMutablePointer<Float> {
    let bytes = max(values.count, 1) * 4
    let p = buffers.allocate(byteCount: bytes, zeroed: true)
    live.append((p, bytes))
    if !values.isEmpty {
      values.withUnsafeBytes { buffers.copy(fromHost: $0.baseAddress!, toDevice: p, byteCount: $0.count) }
      puts += 1
    }
    return p.assumingMemoryBound(to: Float.self)
  }

  func get(_ p: UnsafePointer<Float>, _ count: Int) -> [Float] {
    var out = [Float](repeating: .nan, count: count)
    out.withUnsafeMutableBytes { buffers.copy(fromDevice: p, toHost: $0.baseAddress!, byteCount: $0.count) }
    return out
  }
}

/// Every kernel of the C example (`c-loops`), loaded through the C ABI and run on its own device
/// memory, against `reference` on host arrays: random inputs, shapes that are neither square nor
/// powers of two, leading dimensions wider than the rows, aliasing where the protocol allows it.
final class KernelsPluginTests: XCTestCase {
  var state: UInt64 = 0x9E37_79B9_7F4A_7C15
  /// Uniform in [-2, 2), from a fixed seed.
  func random(_ count: Int) -> [Float] {
    (0..<count).map { _ in
      state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
      return Float(Double(state >> 40) / Double(1 << 24) * 4 - 2)
    }
  }

  var compared = 0
  var bitwise = 0
  var worst = 0.0

  /// `got` within 1e-5 of `want`, relative to max(1, |want|); counts the kernels that agree bit for bit.
  func check(_ what: String, _ got: [Float], _ want: [Float], file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(got.count, want.count, what, file: file, line: line)
    var err = 0.0
    for (g, w) in zip(got, want) {
      let e = abs(Double(g) - Double(w)) / max(1, abs(Double(w)))
      err = g.isNaN || w.isNaN ? .infinity : max(err, e)
    }
    XCTAssertLessThanOrEqual(err, 1e-5, "\(what): largest relative difference \(err)", file: file, line: line)
    compared += 1
    if got.elementsEqual(want, by: { $0.bitPattern == $1.bitPattern }) { bitwise += 1 }
    worst = max(worst, err)
  }

  func loadCLoops() throws -> (Kernels, DeviceMemory, String) {
    let library = try buildLibrary(
      "c-loops", file: "Examples/Plugins/kernels-c/kernels.c", flags: cLoopsFlags, in: try temporaryFolder(self))
    let registry = try Builtins.registry(loading: [library])
    let memory = DeviceMemory(label: "device 0")
    return (try registry.makeKernels("c-loops", threads: 1, memory: memory), memory, library)
  }

  func testCLoopsIsRegisteredAsKernelsOfABIVersion2WithDeviceMemoryOfItsOwn() throws {
    let (k, memory, library) = try loadCLoops()
    let registry = try Builtins.registry(loading: [library])
    XCTAssertEqual(registry.origin(.kernels, "c-loops")?.abiVersion, 2)
    XCTAssertEqual(registry.origin(.kernels, "c-loops")?.file, library)
    XCTAssertTrue(Builtins.known(registry).kernels.contains("c-loops"))
    XCTAssertEqual(k.name, "c-loops")
    XCTAssertNotNil(memory.buffers, "the plugin's memory is placed in the device")
    // A tensor of the device is the plugin's buffer: its bytes reach the host only by a copy.
    let t = try k.allocate([3, 5])
    XCTAssertTrue(t.deviceBuffers === memory.buffers)
    XCTAssertEqual(memory.used, 60)
  }

  func testEveryCKernelMatchesReferenceOnAwkwardShapes() throws {
    let (k, memory, _) = try loadCLoops()
    let r = ReferenceKernels()
    let d = DeviceArrays(memory.buffers!)

    // gemm: every transpose, beta 0 and not, lda/ldb/ldc wider than needed.
    let (m, n, kk) = (5, 7, 3)
    for ta in [false, true] {
      for tb in [false, true] {
        for beta: Float in [0, 0.5] {
          let lda = (ta ? m : kk) + 2, ldb = (tb ? kk : n) + 1, ldc = n + 3
          let a = random((ta ? kk : m) * lda), b = random((tb ? n : kk) * ldb)
          var c = random(m * ldc)
          let dc = d.put(c)
          k.gemm(
            transA: ta, transB: tb, m: m, n: n, k: kk, alpha: 1.5, a: d.put(a), lda: lda, b: d.put(b), ldb: ldb,
            beta: beta, c: dc, ldc: ldc)
          r.gemm(
            transA: ta, transB: tb, m: m, n: n, k: kk, alpha: 1.5, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: &c,
            ldc: ldc)
          check("gemm ta \(ta) tb \(tb) beta \(beta)", d.get(dc, c.count), c)
        }
      }
    }
    do {
      let batch = 3, sa = m * kk + 4, sb = kk * n + 2, sc = m * n + 5
      let a = random(batch * sa), b = random(batch * sb)
      var c = random(batch * sc)
      let dc = d.put(c)
      k.gemmBatched(
        transA: false, transB: true, m: m, n: n, k: kk, alpha: 0.75, a: d.put(a), lda: kk, strideA: sa, b: d.put(b),
        ldb: kk, strideB: sb, beta: 1, c: dc, ldc: n, strideC: sc, batch: batch)
      r.gemmBatched(
        transA: false, transB: true, m: m, n: n, k: kk, alpha: 0.75, a: a, lda: kk, strideA: sa, b: b, ldb: kk,
        strideB: sb, beta: 1, c: &c, ldc: n, strideC: sc, batch: batch)
      check("gemmBatched", d.get(dc, c.count), c)
    }

    // Bias.
    do {
      let (rows, cols) = (3, 7)
      var y = random(rows * cols)
      let bias = random(cols)
      let dy = d.put(y)
      k.addBias(dy, bias: d.put(bias), rows: rows, cols: cols)
      r.addBias(&y, bias: bias, rows: rows, cols: cols)
      check("addBias", d.get(dy, y.count), y)
      let g = random(rows * cols)
      var db = random(cols)
      let ddb = d.put(db)
      k.accumulateBiasGradient(d.put(g), rows: rows, cols: cols, into: ddb)
      r.accumulateBiasGradient(g, rows: rows, cols: cols, into: &db)
      check("accumulateBiasGradient", d.get(ddb, cols), db)
    }

    // Activations.
    do {
      let count = 37
      let x = random(count), dy = random(count)
      let dx = d.put(x), ddy = d.put(dy)
      for (name, f, g) in [
        ("gelu", k.geluForward, r.geluForward), ("relu", k.reluForward, r.reluForward),
      ]
        as [(
          String, (UnsafePointer<Float>, UnsafeMutablePointer<Float>, Int) -> Void,
          (UnsafePointer<Float>, UnsafeMutablePointer<Float>, Int) -> Void
        )]
      {
        let out = d.put([Float](repeating: 9, count: count))
        var want = [Float](repeating: 0, count: count)
        f(dx, out, count)
        g(x, &want, count)
        check("\(name) forward", d.get(out, count), want)
      }
      for (name, f, g) in [
        ("gelu", k.geluBackward, r.geluBackward), ("relu", k.reluBackward, r.reluBackward),
      ]
        as [(
          String, (UnsafePointer<Float>, UnsafePointer<Float>, UnsafeMutablePointer<Float>, Int) -> Void,
          (UnsafePointer<Float>, UnsafePointer<Float>, UnsafeMutablePointer<Float>, Int) -> Void
        )]
      {
        let out = d.put([Float](repeating: 9, count: count))
        var want = [Float](repeating: 0, count: count)
        f(dx, ddy, out, count)
        g(x, dy, &want, count)
        check("\(name) backward", d.get(out, count), want)
      }
    }

    // LayerNorm: forward, then backward accumulating into a dx that is not zero.
    do {
      let (rows, cols) = (3, 13)
      let x = random(rows * cols), gamma = random(cols), beta = random(cols)
      var y = [Float](repeating: 0, count: rows * cols)
      var mean = [Float](repeating: 0, count: rows), rstd = [Float](repeating: 0, count: rows)
      let dx = d.put(x), dgamma = d.put(gamma)
      let out = d.put(y), dmean = d.put(mean), drstd = d.put(rstd)
      k.layerNormForward(
        dx, gamma: dgamma, beta: d.put(beta), out, mean: dmean, rstd: drstd, rows: rows, cols: cols, eps: 1e-5)
      r.layerNormForward(x, gamma: gamma, beta: beta, &y, mean: &mean, rstd: &rstd, rows: rows, cols: cols, eps: 1e-5)
      check("layerNorm forward y", d.get(out, y.count), y)
      check("layerNorm forward mean", d.get(dmean, rows), mean)
      check("layerNorm forward rstd", d.get(drstd, rows), rstd)
      let dy = random(rows * cols)
      var gx = random(rows * cols), gg = random(cols), gb = random(cols)
      let dgx = d.put(gx), dgg = d.put(gg), dgb = d.put(gb)
      k.layerNormBackward(
        d.put(dy), dx, gamma: dgamma, mean: dmean, rstd: drstd, dx: dgx, dgamma: dgg, dbeta: dgb, rows: rows, cols: cols
      )
      r.layerNormBackward(
        dy, x, gamma: gamma, mean: mean, rstd: rstd, dx: &gx, dgamma: &gg, dbeta: &gb, rows: rows, cols: cols)
      check("layerNorm backward dx", d.get(dgx, gx.count), gx)
      check("layerNorm backward dgamma", d.get(dgg, cols), gg)
      check("layerNorm backward dbeta", d.get(dgb, cols), gb)
    }

    // Attention: B 2, T 5, C 6 in 3 heads of 2.
    do {
      let (b, t, c, h) = (2, 5, 6, 3)
      let qkv = random(b * t * 3 * c)
      var out = [Float](repeating: 0, count: b * t * c), probs = [Float](repeating: 0, count: b * h * t * t)
      let dqkv = d.put(qkv), dout = d.put(out), dprobs = d.put(random(probs.count))
      k.attentionForward(qkv: dqkv, out: dout, probs: dprobs, batch: b, seq: t, channels: c, heads: h)
      r.attentionForward(qkv: qkv, out: &out, probs: &probs, batch: b, seq: t, channels: c, heads: h)
      check("attention forward out", d.get(dout, out.count), out)
      check("attention forward probs", d.get(dprobs, probs.count), probs)
      let g = random(out.count)
      var grad = [Float](repeating: 0, count: qkv.count), scratch = [Float](repeating: 0, count: probs.count)
      let dgrad = d.put(random(qkv.count))
      k.attentionBackward(
        dout: d.put(g), qkv: dqkv, probs: dprobs, dqkv: dgrad, scratch: d.put(scratch), batch: b, seq: t, channels: c,
        heads: h)
      r.attentionBackward(
        dout: g, qkv: qkv, probs: probs, dqkv: &grad, scratch: &scratch, batch: b, seq: t, channels: c, heads: h)
      check("attention backward", d.get(dgrad, grad.count), grad)
    }

    // Embeddings: a vocabulary of 11, tokens repeated (their gradients add up in order).
    do {
      let (b, t, c, vocab) = (2, 3, 5, 11)
      let tokens: [Int32] = [4, 0, 10, 4, 4, 7]
      let wte = random(vocab * c), wpe = random(t * c)
      var out = [Float](repeating: 0, count: b * t * c)
      let dout = d.put(out)
      k.embeddingForward(tokens: tokens, wte: d.put(wte), wpe: d.put(wpe), out: dout, batch: b, seq: t, channels: c)
      r.embeddingForward(tokens: tokens, wte: wte, wpe: wpe, out: &out, batch: b, seq: t, channels: c)
      check("embedding forward", d.get(dout, out.count), out)
      let g = random(out.count)
      var gte = random(wte.count), gpe = random(wpe.count)
      let dgte = d.put(gte), dgpe = d.put(gpe)
      k.embeddingBackward(dout: d.put(g), tokens: tokens, dwte: dgte, dwpe: dgpe, batch: b, seq: t, channels: c)
      r.embeddingBackward(dout: g, tokens: tokens, dwte: &gte, dwpe: &gpe, batch: b, seq: t, channels: c)
      check("embedding backward dwte", d.get(dgte, gte.count), gte)
      check("embedding backward dwpe", d.get(dgpe, gpe.count), gpe)
    }

    // Softmax cross-entropy: no gradient, a gradient apart, a gradient over the logits.
    do {
      let (rows, classes) = (5, 13)
      var logits = random(rows * classes).map { $0 * 3 }
      logits[2 * classes + 4] = 40  // a row whose arg-max is certain
      let targets: [Int32] = [0, 12, 4, 7, 4]
      let dlogits = d.put(logits)
      let want = r.softmaxCrossEntropy(
        logits: logits, targets: targets, rows: rows, classes: classes, dlogits: nil, gradScale: 1)
      let got = k.softmaxCrossEntropy(
        logits: dlogits, targets: targets, rows: rows, classes: classes, dlogits: nil, gradScale: 1)
      XCTAssertEqual(got.loss, want.loss, accuracy: 1e-9 * max(1, abs(want.loss)))
      XCTAssertEqual(got.correct, want.correct)
      XCTAssertGreaterThanOrEqual(want.correct, 1)
      var grad = [Float](repeating: 0, count: logits.count)
      let dgrad = d.put(grad)
      let apart = k.softmaxCrossEntropy(
        logits: dlogits, targets: targets, rows: rows, classes: classes, dlogits: dgrad, gradScale: 0.2)
      _ = r.softmaxCrossEntropy(
        logits: logits, targets: targets, rows: rows, classes: classes, dlogits: &grad, gradScale: 0.2)
      XCTAssertEqual(apart.loss, want.loss, accuracy: 1e-9 * max(1, abs(want.loss)))
      check("softmaxCrossEntropy dlogits", d.get(dgrad, grad.count), grad)
      let over = k.softmaxCrossEntropy(
        logits: dlogits, targets: targets, rows: rows, classes: classes, dlogits: dlogits, gradScale: 0.2)
      XCTAssertEqual(over.loss, want.loss, accuracy: 1e-9 * max(1, abs(want.loss)))
      check("softmaxCrossEntropy dlogits over logits", d.get(dlogits, grad.count), grad)
    }

    // Elementwise and reductions, over an odd count.
    do {
      let count = 1001
      let a = random(count), b = random(count)
      let da = d.put(a), db = d.put(b)
      var want = [Float](repeating: 0, count: count)
      let out = d.put(want)
      k.add(da, db, out, count: count)
      r.add(a, b, &want, count: count)
      check("add", d.get(out, count), want)
      var y = random(count)
      let dy = d.put(y)
      k.accumulate(da, into: dy, count: count)
      r.accumulate(a, into: &y, count: count)
      check("accumulate", d.get(dy, count), y)
      k.copy(db, dy, count: count)
      check("copy", d.get(dy, count), b)
      k.fill(dy, value: -0.25, count: count)
      check("fill", d.get(dy, count), [Float](repeating: -0.25, count: count))
      var s = a
      k.scale(da, by: 1.7, count: count)
      r.scale(&s, by: 1.7, count: count)
      check("scale", d.get(da, count), s)
      let sum = k.sumOfSquares(db, count: count)
      XCTAssertEqual(sum, r.sumOfSquares(b, count: count), accuracy: 1e-12 * sum)
    }

    // Optimizers: SGD at steps 1 and 2 (the momentum buffer starts as the gradient), AdamW at step 3.
    do {
      let count = 29
      var p = random(count), buf = random(count), m = random(count), v = random(count).map { abs($0) }
      let g = random(count)
      let dp = d.put(p), dbuf = d.put(buf), dg = d.put(g)
      for step in 1...2 {
        k.sgdStep(
          param: dp, grad: dg, momentumBuffer: dbuf, count: count, lr: 0.1, momentum: 0.9, weightDecay: 0.01, step: step
        )
        r.sgdStep(
          param: &p, grad: g, momentumBuffer: &buf, count: count, lr: 0.1, momentum: 0.9, weightDecay: 0.01, step: step)
      }
      check("sgdStep param", d.get(dp, count), p)
      check("sgdStep momentum", d.get(dbuf, count), buf)
      let dm = d.put(m), dv = d.put(v)
      k.adamwStep(
        param: dp, grad: dg, m: dm, v: dv, count: count, lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8,
        weightDecay: 0.1, step: 3)
      r.adamwStep(
        param: &p, grad: g, m: &m, v: &v, count: count, lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1,
        step: 3)
      check("adamwStep param", d.get(dp, count), p)
      check("adamwStep m", d.get(dm, count), m)
      check("adamwStep v", d.get(dv, count), v)
    }

    // Every byte went through the plugin's copies, counted by the adapter.
    let traffic = memory.buffers!.traffic
    XCTAssertEqual(traffic.hostToDeviceCopies, d.puts)
    XCTAssertEqual(traffic.deviceToHostCopies, compared)
    print(
      "c-loops against reference: \(compared) outputs compared, \(bitwise) bit for bit, largest relative difference \(worst)"
    )
    XCTAssertEqual(bitwise, compared, "the C loops follow reference's order: every output should be its bits")
  }

  /// A table the host cannot use is refused while loading: bad input (exit 2) naming the library.
  func testMalformedKernelsTablesAreRefusedNamingTheFile() throws {
    let folder = try temporaryFolder(self)
    func bad(_ variant: Int) throws -> String {
      try buildLibrary(
        "bad-kernels-\(variant)", file: "Tests/plugins/bad-kernels.c",
        flags: cLoopsFlags + ["-DBAD_KERNELS=\(variant)"],
        in: folder)
    }
    func refusal(_ library: String) -> String {
      do {
        _ = try Builtins.registry(loading: [library])
        return "loaded"
      } catch let e as InputError {
        XCTAssertEqual(e.file, library)
        return e.message
      } catch {
        return "not an InputError: \(error)"
      }
    }
    XCTAssertEqual(refusal(try bad(1)), "its kernels table lacks required functions (NULL): gemm")
    let small = refusal(try bad(2))
    XCTAssertTrue(small.hasPrefix("its kernels table is 16 bytes, but ABI version 2's is "), small)
    XCTAssertTrue(small.contains("(struct_size must be sizeof(hydra_kernels))"), small)
    XCTAssertEqual(
      refusal(try bad(3)),
      "its kernels table says ABI version 999, but kernels tables exist from version 2 and this hydra-mpi speaks up to version 2"
    )
    XCTAssertEqual(refusal(try bad(4)), "kernels \"cpu\" is already registered (built in); choose another name")
  }

  /// A library built against ABI version 1, before kernels, loads into a host of version 2.
  func testALibraryOfABIVersion1StillLoads() throws {
    let library = try buildLibrary("v1", file: "Tests/plugins/v1.c", in: try temporaryFolder(self))
    let registry = try Builtins.registry(loading: [library])
    XCTAssertEqual(registry.origin(.scheduler, "v1-first")?.abiVersion, 1)
    XCTAssertNoThrow(try registry.makeScheduler("v1-first", options: [:], seed: 1))
  }

  /// A table with HYDRA_KERNELS_HOST_MEMORY and no memory functions loads; its tensors are host
  /// memory (no buffers placed), and its compute functions work on host arrays.
  func testHostMemoryKernelsNeedNoMemoryFunctions() throws {
    let library = try buildLibrary(
      "c-host", file: "Tests/plugins/bad-kernels.c", flags: cLoopsFlags + ["-DBAD_KERNELS=5"],
      in: try temporaryFolder(self))
    let memory = DeviceMemory(label: "device 0")
    let k = try Builtins.registry(loading: [library]).makeKernels("c-host", threads: 1, memory: memory)
    XCTAssertNil(memory.buffers)
    let a = random(12), b = random(12)
    var got = [Float](repeating: 0, count: 12), want = got
    k.add(a, b, &got, count: 12)
    ReferenceKernels().add(a, b, &want, count: 12)
    XCTAssertEqual(got, want)
  }

  /// `create` refusing the job with HYDRA_ERROR_INPUT is bad input naming the library and its message.
  func testKernelsRefusingTheJobAreBadInputNamingTheFile() throws {
    let library = try buildLibrary(
      "c-refuses", file: "Tests/plugins/bad-kernels.c", flags: cLoopsFlags + ["-DBAD_KERNELS=6"],
      in: try temporaryFolder(self))
    let registry = try Builtins.registry(loading: [library])
    XCTAssertThrowsError(try registry.makeKernels("c-refuses", threads: 2, memory: DeviceMemory(label: "device 1"))) {
      XCTAssertEqual(
        ($0 as? InputError)?.description,
        "\(library): kernels \"c-refuses\" refuses this job: device 1: 2 threads are not enough")
    }
  }
}
