import Crypto
import Foundation
import HydraCore

/// Checkpoints in the layouts other tools load: for `gpt`, the names, shapes and `config.json` of
/// Hugging Face's `GPT2LMHeadModel` (`transformer.h.0.attn.c_attn.weight`, ...; the head is tied to
/// `transformer.wte.weight` and not stored); for `mlp`, the `state_dict` names of the equivalent
/// `nn.Sequential` (`0.weight`, `0.bias`, `2.weight`, ...).
public enum Checkpoint {
  public static let weightsFile = "model.safetensors"
  public static let configFile = "config.json"
  /// Optimizer state (`<name>.state0`, `.state1`), for resuming; not read by other tools.
  public static let optimizerFile = "optimizer.safetensors"
  /// The step and the losses so far, for resuming. Written last.
  public static let trainerStateFile = "trainer_state.json"

  static func storedName(_ parameter: Parameter, spec: ModelSpec) -> String {
    if case .gpt = spec { return "transformer." + parameter.name }
    return parameter.name
  }

  /// The manifest of a checkpoint: its step, and each file's size and SHA-256.
  public static let manifestFile = "manifest.json"

  /// The folder of the checkpoint of `step` inside a model's checkpoint folder.
  public static func unitName(_ step: Int) -> String { "step-" + String(format: "%08d", step) }

  /// The step of a unit folder's name (`step-00000012`: 12), or nil for any other name.
  static func unitStep(_ name: String) -> Int? {
    guard name.hasPrefix("step-"), let step = Int(name.dropFirst(5)), step >= 0 else { return nil }
    return step
  }

  /// A unit's manifest, decoded; nil when it is missing or unreadable.
  static func manifest(in unit: String) -> Manifest? {
    FileManager.default.contents(atPath: unit + "/" + manifestFile).flatMap {
      try? JSONDecoder().decode(Manifest.self, from: $0)
    }
  }

  /// Writes the checkpoint of `run`'s current step into `folder` (the model's checkpoint folder,
  /// created if needed) as one unit: every file goes into a temporary folder beside it, each is
  /// fsynced and its SHA-256 recorded in `manifest.json`, and the folder is renamed to
  /// `step-<step>` in one step. A crash at any moment leaves the earlier checkpoints whole. Then
  /// `model.safetensors` and `config.json` at the top of `folder` (what transformers loads) are
  /// replaced by links to the new unit's, and all but the newest `keep` units are removed.
  ///
  /// Shards are written one at a time as they come off the host store: nothing holds the whole
  /// model in memory. With `inPlace`, the state is read where the host store keeps it, moving
  /// nothing but what is still on a device, and touching no device's kernels
  /// (`ModelRun.readStateInPlace`; the model must be held from running): how a checkpoint is
  /// written off the device threads. Otherwise each shard is promoted onto `device` in turn and read through its kernels.
  public static func write(
    _ run: ModelRun, to folder: String, device: Int = 0, keep: Int = 2, inPlace: Bool = false
  ) throws {
    let started = Date()
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    let unit = folder + "/" + unitName(run.step)
    let temp = folder + "/.tmp-" + unitName(run.step) + "-\(getpid())"
    try? FileManager.default.removeItem(atPath: temp)
    try FileManager.default.createDirectory(atPath: temp, withIntermediateDirectories: false)
    do {
      var files: [String: ManifestFile] = [:]
      // Every file says its step, so that a file from another step is never taken for this one.
      let step = "\(run.step)"
      var weightEntries: [(name: String, shape: [Int])] = [], stateEntries: [(name: String, shape: [Int])] = []
      for p in run.ownedParameters {
        let name = storedName(p, spec: run.spec)
        weightEntries.append((name, p.shape))
        for i in p.state.indices { stateEntries.append(("\(name).state\(i)", p.shape)) }
      }
      var weightsHash = SHA256(), stateHash = SHA256()
      var weightBytes = 0, stateBytes = 0
      let weights = try SafeTensorsWriter(
        path: temp + "/" + weightsFile, tensors: weightEntries, metadata: ["format": "pt", "hydra_step": step]
      ) {
        weightsHash.update(bufferPointer: $0)
        weightBytes += $0.count
      }
      let states = try SafeTensorsWriter(
        path: temp + "/" + optimizerFile, tensors: stateEntries, metadata: ["hydra_step": step]
      ) {
        stateHash.update(bufferPointer: $0)
        stateBytes += $0.count
      }
      // A full disk in the middle of a checkpoint, for the tests: HYDRA_FAULT_CHECKPOINT=<model>:<step>.
      let fault = ProcessInfo.processInfo.environment["HYDRA_FAULT_CHECKPOINT"] == "\(run.id):\(run.step)"
      func injectFault(_ s: Int) throws {
        if fault && s == run.shards.count / 2 {
          throw RuntimeError(
            "cannot write \(temp)/\(weightsFile): No space left on device (injected by HYDRA_FAULT_CHECKPOINT)")
        }
      }
      if inPlace {
        for s in run.shards.indices {
          try injectFault(s)
          try run.readStateInPlace(ofShard: s) { _, part, values in
            if part == 0 { try weights.append(values) } else { try states.append(values) }
          }
        }
      } else {
        try run.withEveryShard(on: device) { s in
          try injectFault(s)
          for p in run.parameters(ofShard: s) where p.replicaOf == nil {
            // Off the device through its plugin (for `cpu`, the bytes in place).
            try p.value.withHostBuffer { try weights.append($0) }
            for t in p.state { try t.withHostBuffer { try states.append($0) } }
          }
        }
      }
      try weights.finish()
      try states.finish()
      files[weightsFile] = ManifestFile(bytes: weightBytes, sha256: hex(weightsHash.finalize()))
      files[optimizerFile] = ManifestFile(bytes: stateBytes, sha256: hex(stateHash.finalize()))
      files[configFile] = try writeDurably(configJSON(run.spec), to: temp + "/" + configFile)
      // JSON has no NaN or infinity: null stands for them.
      func number(_ x: Double) -> Any { x.isFinite ? x : NSNull() }
      let state: [String: Any] = [
        "step": run.step,
        "train_losses": run.trainLosses.map(number),
        "evaluations": run.evaluations.map {
          ["step": $0.step, "loss": number($0.loss), "accuracy": number($0.accuracy)]
        },
      ]
      let json = try JSONSerialization.data(withJSONObject: state, options: [.sortedKeys])
      files[trainerStateFile] = try writeDurably(
        String(decoding: json, as: UTF8.self) + "\n", to: temp + "/" + trainerStateFile)
      // Whose checkpoint this is: a resume takes a unit only for the model (and member seed) that wrote it.
      let manifest = Manifest(step: run.step, files: files, model: run.id, seed: "\(run.seed)")
      let encoder = JSONEncoder()
      encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
      _ = try writeDurably(
        String(decoding: try encoder.encode(manifest), as: UTF8.self) + "\n", to: temp + "/" + manifestFile)
      syncFolder(temp)
      if FileManager.default.fileExists(atPath: unit) {
        // The same step again (a resumed run repeating it): the new unit replaces the old whole.
        let old = folder + "/.tmp-replaced-\(getpid())"
        try? FileManager.default.removeItem(atPath: old)
        guard rename(unit, old) == 0 else { throw RuntimeError("cannot move \(unit) aside: \(lastError)") }
        try? FileManager.default.removeItem(atPath: old)
      }
      guard rename(temp, unit) == 0 else { throw RuntimeError("cannot rename \(temp) to \(unit): \(lastError)") }
      syncFolder(folder)
    } catch {
      try? FileManager.default.removeItem(atPath: temp)
      let text = "\(error)"
      if text.contains(String(cString: strerror(ENOSPC))) || text.contains(String(cString: strerror(EDQUOT))) {
        // What to do, not only what failed: the half-written unit is gone, the earlier ones are whole.
        throw RuntimeError(
          "\(text)\nthe disk holding \(folder) is full: \(run.id)'s checkpoint at step \(run.step) was not written (its earlier checkpoints are whole); free space there and continue with --resume")
      }
      throw error
    }
    for file in [weightsFile, configFile] { try publish(unit + "/" + file, as: folder + "/" + file) }
    // The layout before units kept these at the top: a unit supersedes them.
    for file in [optimizerFile, trainerStateFile] { unlink(folder + "/" + file) }
    for old in units(in: folder).dropFirst(max(keep, 1)) {
      try? FileManager.default.removeItem(atPath: folder + "/" + old)
    }
    run.checkpointsWritten += 1
    run.checkpointSeconds += Date().timeIntervalSince(started)
  }

  /// Makes the files at the top of a model's checkpoint `folder` (what transformers loads) those of
  /// `unit`, its newest complete checkpoint, where they are not already: a run killed between
  /// renaming a unit into place and linking its files at the top left them at an older step (or
  /// absent), and a resume that has nothing left to train would never link them. Returns the names
  /// replaced. Only the process that owns the output folder calls it, before any step runs, on a
  /// unit `newest` found intact (its files match its manifest).
  @discardableResult
  public static func publishNewest(_ unit: String, in folder: String) throws -> [String] {
    guard unit != folder else { return [] }  // the layout before units: the files are the checkpoint
    let manifest = Checkpoint.manifest(in: unit)
    var replaced: [String] = []
    for file in [weightsFile, configFile] {
      var top = stat(), inUnit = stat()
      guard stat(unit + "/" + file, &inUnit) == 0 else { continue }
      if stat(folder + "/" + file, &top) == 0 && top.st_dev == inUnit.st_dev && top.st_ino == inUnit.st_ino {
        continue
      }
      // Where links are refused the top holds a copy: the unit's bytes (by its manifest, so that
      // the unit's file is not read again) count as linked.
      if let expected = manifest?.files[file], Int(top.st_size) == expected.bytes,
        let (_, digest) = sha256(of: folder + "/" + file), digest == expected.sha256
      {
        continue
      }
      try publish(unit + "/" + file, as: folder + "/" + file)
      replaced.append(file)
    }
    if !replaced.isEmpty { syncFolder(folder) }
    return replaced
  }

  /// `path` replaced, atomically, by a hard link to `source` (a copy where links are refused).
  private static func publish(_ source: String, as path: String) throws {
    let temp = (path as NSString).deletingLastPathComponent + "/.tmp-link-\(getpid())"
    unlink(temp)
    if link(source, temp) != 0 {
      try FileManager.default.copyItem(atPath: source, toPath: temp)
    }
    guard rename(temp, path) == 0 else {
      unlink(temp)
      throw RuntimeError("cannot replace \(path): \(lastError)")
    }
  }

  /// The unit folders in a model's checkpoint folder, newest first.
  static func units(in folder: String) -> [String] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
    return names.compactMap { name -> (Int, String)? in unitStep(name).map { ($0, name) } }.sorted { $0.0 > $1.0 }.map(\.1)
  }

  /// Removes what an interrupted write left in a model's checkpoint folder (temporary folders and
  /// files); returns their names.
  @discardableResult
  public static func removeTemporaries(in folder: String) -> [String] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
    let stale = names.filter { $0.hasPrefix(".tmp-") || $0.contains(".tmp-") }
    for name in stale { try? FileManager.default.removeItem(atPath: folder + "/" + name) }
    return stale
  }

  /// The newest complete, intact checkpoint in a model's checkpoint folder: a unit whose every file
  /// matches its manifest, whose manifest's step is its folder's, and, given `model`, written for
  /// that model (its id and seed). A unit that is not is skipped, with `warn` naming the file and
  /// what is wrong. A folder in the layout before units (its files at the top) counts as one
  /// checkpoint without a manifest. Nil when there is none; throws `InputError` when every unit
  /// there that is whole belongs to another model (a folder copied or moved by hand): training on
  /// from scratch would hide it.
  public static func newest(
    in folder: String, model: (id: String, seed: UInt64)? = nil, warn: (String) -> Void
  ) throws -> String? {
    let found = units(in: folder)
    var foreign: String?
    for name in found {
      let unit = folder + "/" + name
      // Decoded once, for both checks.
      guard let manifest = Checkpoint.manifest(in: unit) else {
        warn("\(unit)/\(manifestFile): missing or unreadable; using an earlier checkpoint")
        continue
      }
      if let problem = verify(unit, manifest) {
        warn("\(problem); using an earlier checkpoint")
        continue
      }
      if let (problem, another) = identityProblem(unit, manifest, step: unitStep(name), model: model) {
        warn("\(problem); using an earlier checkpoint")
        if another { foreign = foreign ?? problem }
        continue
      }
      return unit
    }
    if let foreign {
      throw InputError(
        file: folder,
        "no checkpoint here can be resumed: \(foreign); move the folder away or set another [job] output")
    }
    if found.isEmpty && FileManager.default.fileExists(atPath: folder + "/" + trainerStateFile) { return folder }
    return nil
  }

  /// What in a whole unit's manifest says it is not `model`'s checkpoint of `step` (its folder's),
  /// and whether it names another model (`another`); nil when nothing does. Units written before
  /// the model was recorded are checked for the step only.
  static func identityProblem(
    _ unit: String, _ manifest: Manifest, step: Int?, model: (id: String, seed: UInt64)?
  ) -> (problem: String, another: Bool)? {
    let path = unit + "/" + manifestFile
    if let step, manifest.step != step {
      return ("\(path): step \(manifest.step) in the folder of step \(step)", false)
    }
    guard let model else { return nil }
    if let id = manifest.model, id != model.id {
      return ("\(path): a checkpoint of model \(id), not of \(model.id)", true)
    }
    if let seed = manifest.seed, seed != "\(model.seed)" {
      return ("\(path): a checkpoint of \(model.id) with seed \(seed), not this job's \(model.seed) (another job's?)", true)
    }
    return nil
  }

  /// What is wrong with a checkpoint unit (naming the file), or nil when every file is whole.
  public static func verify(_ unit: String) -> String? {
    guard let manifest = Checkpoint.manifest(in: unit) else { return "\(unit)/\(manifestFile): missing or unreadable" }
    return verify(unit, manifest)
  }

  /// What is wrong with a unit's files against its (decoded) manifest, or nil.
  static func verify(_ unit: String, _ manifest: Manifest) -> String? {
    let manifestPath = unit + "/" + manifestFile
    for name in [weightsFile, optimizerFile, configFile, trainerStateFile] {
      guard let expected = manifest.files[name] else { return "\(manifestPath): does not list \(name)" }
      let path = unit + "/" + name
      guard let (bytes, digest) = sha256(of: path) else { return "\(path): missing or unreadable" }
      if bytes != expected.bytes {
        return "\(path): \(bytes) bytes, the manifest says \(expected.bytes)"
      }
      if digest != expected.sha256 { return "\(path): its SHA-256 does not match the manifest" }
    }
    return nil
  }

  /// Writes `text` to `path`, flushed to disk; its size and SHA-256.
  private static func writeDurably(_ text: String, to path: String) throws -> ManifestFile {
    let bytes = Array(text.utf8)
    let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw RuntimeError("cannot create \(path): \(lastError)") }
    defer { close(fd) }
    var done = 0
    while done < bytes.count {
      let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, bytes.count - done) }
      if n < 0 && errno == EINTR { continue }
      guard n > 0 else { throw RuntimeError("cannot write \(path): \(lastError)") }
      done += n
    }
    guard fsync(fd) == 0 else { throw RuntimeError("cannot flush \(path): \(lastError)") }
    return ManifestFile(bytes: bytes.count, sha256: hex(SHA256.hash(data: bytes)))
  }

  private static func syncFolder(_ path: String) {
    let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
    if fd >= 0 {
      _ = fsync(fd)
      close(fd)
    }
  }

  /// The size and SHA-256 of a file, read in pieces; nil when it cannot be read.
  static func sha256(of path: String) -> (Int, String)? {
    let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var hash = SHA256()
    var total = 0
    let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 64)
    defer { chunk.deallocate() }
    while true {
      let n = read(fd, chunk.baseAddress!, chunk.count)
      if n < 0 && errno == EINTR { continue }
      if n < 0 { return nil }
      if n == 0 { break }
      hash.update(bufferPointer: UnsafeRawBufferPointer(rebasing: chunk[0..<n]))
      total += n
    }
    return (total, hex(hash.finalize()))
  }

  private static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
    digest.map { String(format: "%02x", $0) }.joined()
  }

  private static var lastError: String { String(cString: strerror(errno)) }

  struct Manifest: Codable {
    var step: Int
    var files: [String: ManifestFile]
    /// The model (its id in the job) and its seed; absent in units written before they were recorded.
    var model: String?
    var seed: String?
  }
  struct ManifestFile: Codable {
    var bytes: Int
    var sha256: String
  }

  /// Whether `folder` (a model's checkpoint folder) holds a checkpoint to resume from.
  public static func canResume(from folder: String) -> Bool {
    ((try? newest(in: folder, warn: { _ in })) ?? nil) != nil
  }

  /// Puts a model back where its checkpoint in `folder` left it: weights, optimizer state, step
  /// and the losses so far. The continued run computes exactly what an uninterrupted one would.
  public static func resume(_ run: ModelRun, from folder: String, device: Int = 0) throws {
    let statePath = folder + "/" + trainerStateFile
    // JSONDecoder reads numbers exactly; JSONSerialization on Linux reads some of them 1 ulp off
    // (as NSDecimalNumber), and a resumed run must carry the very losses it had.
    guard let data = FileManager.default.contents(atPath: statePath),
      let state = try? JSONDecoder().decode(TrainerState.self, from: data),
      state.step >= 0, state.step <= run.settings.steps
    else { throw InputError(file: statePath, "not a trainer state this run can resume from") }
    let step = state.step
    if let unitStep = unitStep((folder as NSString).lastPathComponent), unitStep != step {
      throw InputError(file: statePath, "says step \(step), but it is in the checkpoint of step \(unitStep)")
    }
    let weights = try SafeTensorsFile(path: folder + "/" + weightsFile)
    let optimizer = try SafeTensorsFile(path: folder + "/" + optimizerFile)
    for (file, st) in [(weightsFile, weights), (optimizerFile, optimizer)] where st.metadata["hydra_step"] != "\(step)"
    {
      throw InputError(
        file: folder + "/" + file,
        "holds step \(st.metadata["hydra_step"] ?? "?"), but \(trainerStateFile) says \(step): the checkpoint was cut short"
      )
    }
    try load(into: run, from: folder, device: device)
    try run.withEveryShard(on: device, heldHere: true) { s in
      for p in run.parameters(ofShard: s) where p.replicaOf == nil {
        for (i, t) in p.state.enumerated() {
          let v = try optimizer.floats("\(storedName(p, spec: run.spec)).state\(i)", expectedShape: p.shape)
          v.withUnsafeBytes { t.write(from: $0.baseAddress!) }
        }
      }
    }
    run.restore(
      step: step, trainLosses: state.train_losses.map { $0 ?? .nan },
      evaluations: state.evaluations.map {
        Evaluation(step: $0.step, loss: $0.loss ?? .nan, accuracy: $0.accuracy ?? .nan)
      })
  }

  /// `trainer_state.json` as `write` lays it out (null for a loss that was not finite).
  private struct TrainerState: Decodable {
    var step: Int
    var train_losses: [Double?]
    var evaluations: [EvaluationEntry]
    struct EvaluationEntry: Decodable {
      var step: Int
      var loss: Double?
      var accuracy: Double?
    }
  }

  static func configJSON(_ spec: ModelSpec) -> String {
    switch spec {
    case .gpt(let s):
      // GPT-2 with dropout off, gelu_new (the tanh GELU), LayerNorm eps 1e-5, tied head.
      return """
        {
          "architectures": ["GPT2LMHeadModel"],
          "model_type": "gpt2",
          "vocab_size": \(s.vocab),
          "n_positions": \(s.context),
          "n_ctx": \(s.context),
          "n_embd": \(s.channels),
          "n_layer": \(s.layers),
          "n_head": \(s.heads),
          "n_inner": null,
          "activation_function": "gelu_new",
          "resid_pdrop": 0.0,
          "embd_pdrop": 0.0,
          "attn_pdrop": 0.0,
          "summary_first_dropout": 0.0,
          "layer_norm_epsilon": 1e-05,
          "initializer_range": 0.02,
          "scale_attn_weights": true,
          "tie_word_embeddings": true,
          "bos_token_id": null,
          "eos_token_id": null,
          "torch_dtype": "float32"
        }

        """
    case .mlp(let inputs, let hidden, let classes):
      let layers = ([inputs] + hidden + [classes]).map(String.init).joined(separator: ", ")
      return """
        {
          "model_type": "hydra-mlp",
          "description": "torch.nn.Sequential of Linear layers with ReLU between them; widths in order",
          "widths": [\(layers)],
          "inputs": \(inputs),
          "hidden": [\(hidden.map(String.init).joined(separator: ", "))],
          "classes": \(classes)
        }

        """
    }
  }

  /// Checks, without loading any values, that `path` holds every tensor `spec` needs with the right
  /// shape (blocks are built one at a time, so this needs one block's memory at most).
  public static func check(_ spec: ModelSpec, against path: String) throws {
    let (file, st) = try open(path)
    for i in 0..<spec.blockCount {
      for p in try spec.makeBlock(i, memory: nil).parameters where p.replicaOf == nil {
        _ = try entry(for: p, spec: spec, in: st, file: file)
      }
    }
  }

  private static func open(_ path: String) throws -> (String, SafeTensorsFile) {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
      throw InputError(file: path, "the initial checkpoint does not exist")
    }
    let file = isDir.boolValue ? path + "/" + weightsFile : path
    return (file, try SafeTensorsFile(path: file))
  }

  /// The stored name for `p` and whether its rows must be cut (a longer position table).
  private static func entry(for p: Parameter, spec: ModelSpec, in st: SafeTensorsFile, file: String) throws -> (
    String, Bool
  ) {
    let candidates = [storedName(p, spec: spec), p.name]
    guard let name = candidates.first(where: { st.entries[$0] != nil }) else {
      throw InputError(file: file, "tensor \"\(candidates[0])\" is missing (the model needs shape \(p.shape))")
    }
    let shape = st.entries[name]!.shape
    if p.name == "wpe.weight", shape.count == 2, shape[1] == p.shape[1], shape[0] > p.shape[0] { return (name, true) }
    guard shape == p.shape else {
      throw InputError(file: file, "tensor \"\(name)\" has shape \(shape), the model needs \(p.shape)")
    }
    return (name, false)
  }

  /// Loads initial weights into a model: `path` is a folder holding `model.safetensors` (a Hugging
  /// Face download, or a hydra-mpi checkpoint) or a `.safetensors` file. Names may carry the
  /// `transformer.` prefix or not; F16/BF16 are widened. A GPT-2 position table longer than the
  /// model's context is cut to its first `context` rows.
  public static func load(into run: ModelRun, from path: String, device: Int = 0) throws {
    let (file, st) = try open(path)
    try run.withEveryShard(on: device, heldHere: true) { s in
      for p in run.parameters(ofShard: s) where p.replicaOf == nil {
        let (name, cut) = try entry(for: p, spec: run.spec, in: st, file: file)
        let values = cut ? Array(try st.floats(name).prefix(p.count)) : try st.floats(name, expectedShape: p.shape)
        values.withUnsafeBytes { p.value.write(from: $0.baseAddress!) }
      }
    }
  }
}

func writeAtomically(_ text: String, to path: String) throws {
  let temp = path + ".tmp-\(getpid())"
  try Data(text.utf8).write(to: URL(fileURLWithPath: temp))
  if rename(temp, path) != 0 {
    let err = String(cString: strerror(errno))
    unlink(temp)
    throw RuntimeError("cannot write \(path): \(err)")
  }
}
