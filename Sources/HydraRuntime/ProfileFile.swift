import Foundation
import HydraCore

/// Task times per block for `hydra-mpi plan`: given by hand (`--profile FILE`: timings of hardware
/// that is not here, from a paper or another machine) or measured here (`--measure`, cached as
/// `profile.json` in the job's output folder). The format is in `docs/planning.md`:
///
/// ```json
/// { "hydra_profile": 1,
///   "bandwidth_bytes_per_second": 12e9,
///   "shapes": [ { "shape": "gpt layers=2 d_model=32 heads=4 context=32 vocab=256 batch=8",
///                 "forward_seconds": [0.001, 0.002, 0.002, 0.003],
///                 "backward_seconds": 0.004,
///                 "first_forward_seconds": 0.009, "first_backward_seconds": 0.012,
///                 "checkpoint_seconds": 0.05 } ] }
/// ```
///
/// A shape's times are one number per block (or one number for every block) at that batch size.
/// The `first_` times, optional, are those of the first step a process runs, which maps its
/// buffers and optimizer state afresh; `checkpoint_seconds`, optional, one checkpoint write of the
/// whole model.
public struct ProfileFile: Sendable, Equatable {
  public struct Shape: Sendable, Equatable {
    public var shape: String
    public var forwardSeconds: Times
    public var backwardSeconds: Times
    /// The first step's times, when given.
    public var firstForwardSeconds: Times?
    public var firstBackwardSeconds: Times?
    /// Seconds of one checkpoint write of the whole model, when given.
    public var checkpointSeconds: Double?
    public init(
      shape: String, forwardSeconds: Times, backwardSeconds: Times, firstForwardSeconds: Times? = nil,
      firstBackwardSeconds: Times? = nil, checkpointSeconds: Double? = nil
    ) {
      self.shape = shape
      self.forwardSeconds = forwardSeconds
      self.backwardSeconds = backwardSeconds
      self.firstForwardSeconds = firstForwardSeconds
      self.firstBackwardSeconds = firstBackwardSeconds
      self.checkpointSeconds = checkpointSeconds
    }

    /// The forward and backward seconds of each of `blocks` blocks, and those of the first step
    /// (the others where none are given); the error names `file` and what does not fit.
    public func blockSeconds(_ blocks: Int, file: String) throws -> (
      forward: [Double], backward: [Double], firstForward: [Double], firstBackward: [Double]
    ) {
      guard let f = forwardSeconds.blocks(blocks), let b = backwardSeconds.blocks(blocks),
        let ff = firstForwardSeconds.map({ $0.blocks(blocks) }) ?? f,
        let fb = firstBackwardSeconds.map({ $0.blocks(blocks) }) ?? b
      else {
        throw InputError(
          file: file,
          "shape \"\(shape)\" has \(blocks) blocks: forward_seconds and backward_seconds (and first_forward_seconds and first_backward_seconds, if given) need one number, or \(blocks)"
        )
      }
      return (f, b, ff, fb)
    }
  }

  /// Seconds per block: one for every block, or one each.
  public enum Times: Sendable, Equatable {
    case every(Double)
    case each([Double])

    /// The times of `blocks` blocks, or why not.
    func blocks(_ blocks: Int) -> [Double]? {
      switch self {
      case .every(let s): return Array(repeating: s, count: blocks)
      case .each(let s): return s.count == blocks ? s : nil
      }
    }
  }

  public var shapes: [Shape]
  /// Bytes per second of a shard's state moving between devices (nil: moves cost nothing).
  public var bandwidth: Double?
  /// Where it was measured (a cache written by `--measure`): reused only for the same kernels and
  /// threads per device.
  public var kernels: String?
  public var threadsPerDevice: Int?
  public var note: String?

  public init(
    shapes: [Shape], bandwidth: Double? = nil, kernels: String? = nil, threadsPerDevice: Int? = nil, note: String? = nil
  ) {
    self.shapes = shapes
    self.bandwidth = bandwidth
    self.kernels = kernels
    self.threadsPerDevice = threadsPerDevice
    self.note = note
  }

  /// The largest file read (a profile holds a few numbers per block of a few shapes).
  public static let maxBytes = 64 << 20
  /// The most shapes, and numbers per shape, a file may hold.
  public static let maxShapes = 100_000
  public static let maxBlocks = 1 << 20

  /// The key a model's shape has in a profile: its architecture and batch size, as in
  /// `gpt layers=12 d_model=768 heads=12 context=1024 vocab=50257 batch=8`.
  public static func key(_ spec: ModelSpec, batch: Int) -> String {
    switch spec {
    case .gpt(let s):
      return
        "gpt layers=\(s.layers) d_model=\(s.channels) heads=\(s.heads) context=\(s.context) vocab=\(s.vocab) batch=\(batch)"
    case .mlp(let inputs, let hidden, let classes):
      return
        "mlp inputs=\(inputs) hidden=[\(hidden.map(String.init).joined(separator: ","))] classes=\(classes) batch=\(batch)"
    }
  }

  /// Reads `path`; every problem is an `InputError` naming the file.
  public static func read(_ path: String) throws -> ProfileFile {
    let attributes = try? FileManager.default.attributesOfItem(atPath: path)
    guard let size = (attributes?[.size] as? NSNumber)?.intValue, let data = FileManager.default.contents(atPath: path)
    else {
      throw InputError(file: path, "cannot read the profile file")
    }
    guard size <= maxBytes else {
      throw InputError(file: path, "a profile file holds at most 64 MiB; this one has \(size) bytes")
    }
    return try parse(data, file: path)
  }

  /// A time a profile may hold: finite, in [0, 1e9) seconds.
  private static func isSeconds(_ x: Double) -> Bool { x.isFinite && x >= 0 && x < 1e9 }

  /// Parses a profile's JSON; `file` names it in errors.
  public static func parse(_ data: Data, file: String) throws -> ProfileFile {
    guard data.count <= maxBytes else { throw InputError(file: file, "a profile file holds at most 64 MiB") }
    let raw: Raw
    do {
      raw = try JSONDecoder().decode(Raw.self, from: data)
    } catch let e as DecodingError {
      throw InputError(file: file, describe(e))
    } catch let e as InputError {
      throw InputError(file: file, e.message)
    } catch {
      throw InputError(file: file, "not a profile (JSON): \(error.localizedDescription)")
    }
    guard raw.hydra_profile == 1 else {
      throw InputError(file: file, "hydra_profile must be 1 (the format's version); found \(raw.hydra_profile)")
    }
    if let b = raw.bandwidth_bytes_per_second, !(b.isFinite && b > 0) {
      throw InputError(file: file, "bandwidth_bytes_per_second must be a number > 0; found \(b)")
    }
    if let t = raw.threads_per_device, !(1...1024).contains(t) {
      throw InputError(file: file, "threads_per_device must be in 1...1024; found \(t)")
    }
    guard raw.shapes.count <= maxShapes else {
      throw InputError(file: file, "at most \(maxShapes) shapes; found \(raw.shapes.count)")
    }
    var seen = Set<String>()
    var shapes: [Shape] = []
    for (i, s) in raw.shapes.enumerated() {
      let at = "shapes[\(i)] (\"\(s.shape.prefix(200))\")"
      guard !s.shape.isEmpty else { throw InputError(file: file, "shapes[\(i)]: shape is empty") }
      guard seen.insert(s.shape).inserted else { throw InputError(file: file, "\(at): the shape is listed twice") }
      let named: [(String, Times?)] = [
        ("forward_seconds", s.forward_seconds), ("backward_seconds", s.backward_seconds),
        ("first_forward_seconds", s.first_forward_seconds), ("first_backward_seconds", s.first_backward_seconds),
      ]
      for case let (name, times?) in named {
        let values: [Double]
        switch times {
        case .every(let v): values = [v]
        case .each(let v): values = v
        }
        guard !values.isEmpty, values.count <= maxBlocks else {
          throw InputError(file: file, "\(at): \(name) needs 1 to \(maxBlocks) numbers; found \(values.count)")
        }
        if let bad = values.firstIndex(where: { !isSeconds($0) }) {
          throw InputError(
            file: file, "\(at): \(name)[\(bad)] must be a number of seconds in [0, 1e9); found \(values[bad])")
        }
      }
      if let c = s.checkpoint_seconds, !isSeconds(c) {
        throw InputError(file: file, "\(at): checkpoint_seconds must be a number of seconds in [0, 1e9); found \(c)")
      }
      shapes.append(
        Shape(
          shape: s.shape, forwardSeconds: s.forward_seconds, backwardSeconds: s.backward_seconds,
          firstForwardSeconds: s.first_forward_seconds, firstBackwardSeconds: s.first_backward_seconds,
          checkpointSeconds: s.checkpoint_seconds))
    }
    return ProfileFile(
      shapes: shapes, bandwidth: raw.bandwidth_bytes_per_second, kernels: raw.kernels,
      threadsPerDevice: raw.threads_per_device, note: raw.note)
  }

  /// The times of the shape `key`; the error names `file` and the shapes the profile has.
  public func shape(_ key: String, file: String) throws -> Shape {
    guard let s = shapes.first(where: { $0.shape == key }) else {
      let known = shapes.prefix(8).map { "\"\($0.shape)\"" }.joined(separator: ", ")
      throw InputError(
        file: file, "no times for the shape \"\(key)\"; the profile has \(shapes.isEmpty ? "none" : known)")
    }
    return s
  }

  /// The forward and backward seconds of each of `blocks` blocks of the shape `key`, and those of
  /// the first step (the others where the profile has none); the error names `file` and what is
  /// missing.
  public func blockSeconds(_ key: String, blocks: Int, file: String) throws -> (
    forward: [Double], backward: [Double], firstForward: [Double], firstBackward: [Double]
  ) {
    try shape(key, file: file).blockSeconds(blocks, file: file)
  }

  /// The file's JSON (what `--measure` writes).
  public func json() -> String {
    func times(_ t: Times) -> String {
      switch t {
      case .every(let v): return "\(v)"
      case .each(let v): return "[" + v.map { "\($0)" }.joined(separator: ", ") + "]"
      }
    }
    var lines = ["{", "  \"hydra_profile\": 1,"]
    if let note { lines.append("  \"note\": \(quoted(note)),") }
    if let kernels { lines.append("  \"kernels\": \(quoted(kernels)),") }
    if let threadsPerDevice { lines.append("  \"threads_per_device\": \(threadsPerDevice),") }
    if let bandwidth { lines.append("  \"bandwidth_bytes_per_second\": \(bandwidth),") }
    lines.append("  \"shapes\": [")
    lines.append(
      shapes.map {
        var fields = [
          "\"shape\": \(quoted($0.shape))", "\"forward_seconds\": \(times($0.forwardSeconds))",
          "\"backward_seconds\": \(times($0.backwardSeconds))",
        ]
        if let t = $0.firstForwardSeconds { fields.append("\"first_forward_seconds\": \(times(t))") }
        if let t = $0.firstBackwardSeconds { fields.append("\"first_backward_seconds\": \(times(t))") }
        if let c = $0.checkpointSeconds { fields.append("\"checkpoint_seconds\": \(c)") }
        return "    {" + fields.joined(separator: ",\n     ") + "}"
      }.joined(separator: ",\n"))
    lines.append("  ]")
    lines.append("}")
    return lines.joined(separator: "\n") + "\n"
  }

  private func quoted(_ s: String) -> String {
    let data = try? JSONEncoder().encode([s])
    let array = data.flatMap { String(data: $0, encoding: .utf8) } ?? "[\"\"]"
    return String(array.dropFirst().dropLast())
  }

  private struct Raw: Decodable {
    var hydra_profile: Int
    var note: String?
    var kernels: String?
    var threads_per_device: Int?
    var bandwidth_bytes_per_second: Double?
    var shapes: [RawShape]
  }

  private struct RawShape: Decodable {
    var shape: String
    var forward_seconds: Times
    var backward_seconds: Times
    var first_forward_seconds: Times?
    var first_backward_seconds: Times?
    var checkpoint_seconds: Double?
  }

  private static func describe(_ e: DecodingError) -> String {
    func path(_ c: [CodingKey]) -> String {
      c.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined().drop { $0 == "." }.description
    }
    switch e {
    case .keyNotFound(let key, let c):
      let at = path(c.codingPath)
      return "\(at.isEmpty ? "" : at + ": ")missing \"\(key.stringValue)\""
    case .typeMismatch(_, let c), .valueNotFound(_, let c):
      return "\(path(c.codingPath)): \(c.debugDescription)"
    case .dataCorrupted(let c):
      let at = path(c.codingPath)
      let why = (c.underlyingError as NSError?)?.userInfo[NSDebugDescriptionErrorKey] as? String
      return "\(at.isEmpty ? "" : at + ": ")not valid JSON or not a profile: \(why ?? c.debugDescription)"
    @unknown default:
      return "not a profile: \(e)"
    }
  }
}

extension ProfileFile.Times: Decodable {
  public init(from decoder: Decoder) throws {
    let c = try decoder.singleValueContainer()
    if let v = try? c.decode(Double.self) {
      self = .every(v)
    } else {
      self = .each(try c.decode([Double].self))
    }
  }
}
