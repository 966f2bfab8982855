import Crypto
import Foundation
import HydraConfig
import HydraCore

/// One run at a time per output folder, and results never replaced by accident.
///
/// - A run holds `<output>/.hydra-lock` (host and pid) from before it writes anything until it
///   ends. A second run into a locked folder is refused; a lock whose process is dead (on this
///   host) is broken, with a line saying so.
/// - A folder that holds results (a `summary.json`, a `metrics.csv` or a `checkpoints` folder) is
///   refused without `--resume`.
/// - With `--resume`, the job must still describe the same models and data as the run that made the
///   results: its `[job] seed`, `[data]`, `[model]`, `[train]` (but `steps`, `eval_every`,
///   `eval_batches`, `checkpoint_every`, `keep_checkpoints`), `[sweep]` and `[[models]]` against the
///   earlier `job.toml`, and the data file's SHA-256 against the one recorded then.
public final class OutputLock {
  public static let lockFile = ".hydra-lock"
  /// The data file's size and SHA-256 when the results were started.
  public static let dataFile = ".hydra-data.json"
  public let path: String
  private var held = false

  /// The checks that write nothing, made before the job starts (so that under `mpi` every rank
  /// stops): a folder in use by a live run, results without `--resume`, a changed job with it.
  public static func check(folder: String, config: JobConfig, resume: Bool) throws {
    let fm = FileManager.default
    if let (host, pid, alive) = owner(folder + "/" + lockFile), alive || host != ProcessInfo.processInfo.hostName {
      throw InputError(
        file: config.file,
        "the output folder \(folder) is in use by another run (host \(host), pid \(pid)); wait for it to end, or set another [job] output"
      )
    }
    if earlierProcessAlive(folder) {
      throw InputError(
        file: config.file,
        "the output folder \(folder) is in use by a process of an earlier run that is still alive (a rank of a stopped or killed job on its way out: `fuser \(folder)/\(ranksFile)` names it); wait for it to end, or set another [job] output"
      )
    }
    let results = ["summary.json", "metrics.csv", "checkpoints"].filter { fm.fileExists(atPath: folder + "/" + $0) }
    if !results.isEmpty && !resume {
      throw InputError(
        file: config.file,
        "the output folder \(folder) holds the results of an earlier run (\(results.joined(separator: ", "))); continue them with --resume, or set another [job] output (--set job.output=\"...\")"
      )
    }
    if resume && !results.isEmpty { try checkSameJob(config, folder: folder, data: try dataFingerprint(config)) }
  }

  /// Every process of a run (every rank under `mpi`) holds a shared flock(2) on `<output>/.hydra-ranks`
  /// from before it writes anything into the folder until it ends; the kernel lets it go when the
  /// process dies, however it dies. `.hydra-lock` names one process (rank 0's); this names them all,
  /// so that a rank left running by a killed mpirun, still writing a checkpoint unit or a spill
  /// file, keeps the next run out of the folder.
  public static let ranksFile = ".hydra-ranks"

  /// Whether a live process (of an earlier run: this run's processes take theirs later) holds
  /// `folder`'s ranks lock, after waiting up to `patience` seconds for it to end. False where the
  /// file does not exist or the file system has no flock (nothing can be told there).
  static func earlierProcessAlive(_ folder: String, patience: Double = 5) -> Bool {
    let fd = open(folder + "/" + ranksFile, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    let end = Date().addingTimeInterval(patience)
    while true {
      if flock(fd, LOCK_EX | LOCK_NB) == 0 {
        _ = flock(fd, LOCK_UN)
        return false
      }
      guard errno == EWOULDBLOCK || errno == EINTR else { return false }
      if Date() >= end { return true }
      usleep(50_000)
    }
  }

  /// This process's share of `folder`'s ranks lock (see `ranksFile`), held until `release` or the
  /// process's end. Taken by every process after they all passed `check`.
  public final class Presence {
    private var fd: Int32 = -1

    public init(folder: String, config: JobConfig) throws {
      try OutputLock.makeFolder(folder, config: config)
      let path = folder + "/" + OutputLock.ranksFile
      fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
      guard fd >= 0 else { throw InputError(file: config.file, OutputLock.unusable(folder, errno: errno)) }
      // Exclusive only for an instant, by a run starting into the folder: wait it out.
      for _ in 0..<200 {
        if flock(fd, LOCK_SH | LOCK_NB) == 0 || (errno != EWOULDBLOCK && errno != EINTR) { return }
        usleep(50_000)
      }
    }

    deinit { release() }

    public func release() {
      if fd >= 0 { close(fd) }
      fd = -1
    }
  }

  /// Creates `folder` and its parents, or says in the user's terms why its path cannot be used
  /// (exit 2): a part of it that is a file, a read-only file system, no permission, a full disk.
  static func makeFolder(_ folder: String, config: JobConfig) throws {
    // The parts of the path that do not exist yet; the deepest one that does must be a folder.
    var missing: [String] = []
    var part = folder
    var isFolder: ObjCBool = false
    while !part.isEmpty, part != "/", !FileManager.default.fileExists(atPath: part, isDirectory: &isFolder) {
      missing.append(part)
      part = (part as NSString).deletingLastPathComponent
    }
    if !part.isEmpty, part != "/", !isFolder.boolValue {
      throw InputError(
        file: config.file,
        "the output folder \(folder) cannot be made: \(part) is a file, not a folder; set another [job] output (--set job.output=\"...\")"
      )
    }
    // Each missing part made with mkdir(2), so that the reason is its errno, not Foundation's text.
    for part in missing.reversed() where mkdir(part, 0o755) != 0 && errno != EEXIST {
      throw InputError(file: config.file, unusable(folder, errno: errno))
    }
  }

  /// Why `folder` cannot hold a run's output, from the errno of the call that failed there.
  static func unusable(_ folder: String, errno code: Int32) -> String {
    let why: String
    switch code {
    case EROFS: why = "it is on a read-only file system"
    case EACCES, EPERM: why = "this user may not write there (permission denied)"
    case ENOSPC, EDQUOT: why = "the disk (or this user's quota) is full"
    case ENOTDIR, EEXIST: why = "a part of its path is a file, not a folder"
    default: why = String(cString: strerror(code))
    }
    return "the output folder \(folder) cannot be used: \(why); set another [job] output (--set job.output=\"...\")"
  }

  /// Takes the lock of `folder` (created if need be): its host and pid go into `.hydra-lock`. A lock
  /// left by a dead process of this host is broken, with a line to `log`. Throws `InputError`
  /// (exit 2) when another run took it first.
  public init(folder: String, config: JobConfig, log: (String) -> Void) throws {
    path = folder + "/" + Self.lockFile
    try Self.makeFolder(folder, config: config)
    let me = "\(ProcessInfo.processInfo.hostName) \(getpid())\n"
    for attempt in 0..<2 {
      let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
      if fd < 0 && errno != EEXIST {
        throw InputError(file: config.file, Self.unusable(folder, errno: errno))
      }
      if fd >= 0 {
        _ = me.withCString { write(fd, $0, strlen($0)) }
        close(fd)
        held = true
        break
      }
      if attempt == 0, let (host, pid, alive) = Self.owner(path), host == ProcessInfo.processInfo.hostName, !alive {
        log("\(path): the run that held this output folder (pid \(pid)) is gone; taking the folder over")
        unlink(path)
        continue
      }
      let (host, pid, _) = Self.owner(path) ?? ("?", "?", true)
      throw InputError(
        file: config.file,
        "the output folder \(folder) is in use by another run (host \(host), pid \(pid)); wait for it to end, or set another [job] output"
      )
    }
    if !FileManager.default.fileExists(atPath: folder + "/" + Self.dataFile) {
      do {
        try writeAtomically(try Self.dataFingerprint(config), to: folder + "/" + Self.dataFile)
      } catch {
        release()
        throw error
      }
    }
  }

  /// The host and pid a lock file names, and whether that process is alive (as seen from here).
  static func owner(_ lock: String) -> (host: String, pid: String, alive: Bool)? {
    guard let text = try? String(contentsOfFile: lock, encoding: .utf8) else { return nil }
    let parts = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
    let host = parts.first.map(String.init) ?? "?"
    let pid = parts.count > 1 ? Int32(parts[1]) : nil
    let alive = pid.map { isAlive(pid: $0) } ?? false
    return (host, pid.map(String.init) ?? "?", alive)
  }

  deinit { release() }

  /// Gives the folder back (the run has ended).
  public func release() {
    if held { unlink(path) }
    held = false
  }

  /// `{"path": ..., "bytes": ..., "sha256": ...}` of the job's data file.
  static func dataFingerprint(_ config: JobConfig) throws -> String {
    let path = config.data.path
    guard let (bytes, digest) = Checkpoint.sha256(of: path) else {
      throw InputError(file: path, "cannot read the data file")
    }
    return "{\"bytes\": \(bytes), \"sha256\": \"\(digest)\"}\n"
  }

  /// The keys that decide what a model computes: any change to them is refused on `--resume`.
  static func weightKeys(_ toml: String) -> [String: String] {
    var out: [String: String] = [:]
    var table = ""
    var models = -1
    let free: Set<String> = [
      "train.steps", "train.eval_every", "train.eval_batches", "train.checkpoint_every", "train.keep_checkpoints",
      // The data's content is checked by its SHA-256: the same file elsewhere is the same data.
      "data.path",
    ]
    for raw in toml.split(separator: "\n") {
      let line = raw.trimmingCharacters(in: .whitespaces)
      if line.hasPrefix("[[") {
        models += 1
        table = "models.\(models)"
        continue
      }
      if line.hasPrefix("[") {
        table = String(line.dropFirst().prefix { $0 != "]" })
        continue
      }
      guard let eq = line.firstIndex(of: "="), !line.hasPrefix("#") else { continue }
      let key = line[..<eq].trimmingCharacters(in: .whitespaces).trimmingCharacters(
        in: CharacterSet(charactersIn: "\""))
      let value = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
      let name = "\(table).\(key)"
      let counts =
        ["data", "model", "train", "sweep"].contains(table) || table.hasPrefix("models.") || name == "job.seed"
      if counts && !free.contains(name) { out[name] = value }
    }
    return out
  }

  static func checkSameJob(_ config: JobConfig, folder: String, data: String) throws {
    guard let before = try? String(contentsOfFile: folder + "/job.toml", encoding: .utf8) else { return }
    let old = weightKeys(before), new = weightKeys(config.resolvedTOML())
    var changes: [String] = []
    for key in Set(old.keys).union(new.keys).sorted() where old[key] != new[key] {
      changes.append("  \(key): \(old[key] ?? "(not set)") -> \(new[key] ?? "(not set)")")
    }
    if let recorded = try? String(contentsOfFile: folder + "/" + dataFile, encoding: .utf8), recorded != data {
      changes.append(
        "  the data file \(config.data.path) changed: \(recorded.trimmingCharacters(in: .whitespacesAndNewlines)) -> \(data.trimmingCharacters(in: .whitespacesAndNewlines))"
      )
    }
    if !changes.isEmpty {
      throw InputError(
        file: config.file,
        "--resume: this job trains different models than the results in \(folder) (scheduler, devices, backend, partitioner, budgets and a longer train.steps may change; these may not):\n"
          + changes.joined(separator: "\n") + "\nset another [job] output to start afresh")
    }
  }
}
