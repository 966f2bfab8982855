import Foundation
import XCTest

/// Never losing a sweep, through the tool as a user runs it: killed at any moment (SIGKILL) or
/// stopped (SIGTERM), a run resumes and ends with the bytes of one never interrupted; an output
/// folder belongs to one run; results are not replaced, nor continued by a different job.
final class ReliabilityTests: XCTestCase {
  func job(_ dir: String, data: String, steps: Int = 12, dModel: Int = 64, extra: String = "") throws -> String {
    try writeJob(
      dir,
      """
      [job]
      name = "reliable"
      output = "out"
      seed = 21
      [cluster]
      devices = 2
      device_memory = "8MiB"
      host_memory = "2MiB"
      [data]
      format = "text"
      path = "\(data)"
      [model]
      kind = "gpt"
      layers = 2
      d_model = \(dModel)
      heads = 2
      context = 16
      [train]
      steps = \(steps)
      batch_size = 4
      warmup_steps = 2
      eval_every = 0
      eval_batches = 1
      \(extra)
      [sweep]
      "train.lr" = [3e-3, 1e-3]
      """)
  }

  func textData(_ dir: String) throws -> String {
    let data = dir + "/text.txt"
    try String(repeating: "a run stopped at any moment loses nothing. ", count: 300).write(
      toFile: data, atomically: true, encoding: .utf8)
    return data
  }

  /// The tool in the background, its output going to files (no pipe to fill up).
  func launch(_ args: [String], log: String, environment: [String: String] = [:]) throws -> Process {
    let bundle = URL(
      fileURLWithPath: CommandLine.arguments.first { $0.hasSuffix(".xctest") } ?? CommandLine.arguments[0])
    let p = Process()
    p.executableURL = bundle.deletingLastPathComponent().appendingPathComponent("hydra-mpi")
    p.arguments = args
    p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    FileManager.default.createFile(atPath: log, contents: nil)
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
    p.standardOutput = handle
    p.standardError = handle
    try p.run()
    return p
  }

  /// Waits until `condition` holds (polling), at most `seconds`.
  func wait(_ seconds: Double, until condition: () -> Bool) -> Bool {
    let end = Date().addingTimeInterval(seconds)
    while Date() < end {
      if condition() { return true }
      usleep(20_000)
    }
    return condition()
  }

  func trainRows(_ out: String) -> Int {
    let text = (try? String(contentsOfFile: out + "/metrics.csv", encoding: .utf8)) ?? ""
    return text.split(separator: "\n").filter { $0.contains(",train,") }.count
  }

  /// Each model's newest checkpoint unit and the files transformers loads, byte for byte.
  func assertSameEnd(_ a: String, _ b: String, step: Int, file: StaticString = #filePath, line: UInt = #line) throws {
    let unit = String(format: "step-%08d", step)
    for model in ["m000", "m001"] {
      for name in [
        "\(unit)/model.safetensors", "\(unit)/optimizer.safetensors", "\(unit)/trainer_state.json",
        "\(unit)/manifest.json", "model.safetensors",
      ] {
        let x = try Data(contentsOf: URL(fileURLWithPath: "\(a)/out/checkpoints/\(model)/\(name)"))
        let y = try Data(contentsOf: URL(fileURLWithPath: "\(b)/out/checkpoints/\(model)/\(name)"))
        XCTAssertEqual(x, y, "\(model)/\(name)", file: file, line: line)
      }
    }
  }

  /// SIGKILL at many moments of a run that checkpoints every step (inside checkpoint writes too):
  /// every `--resume` starts, and the last one ends where an uninterrupted run does.
  func testKilledAtManyMomentsTheSweepAlwaysResumesToTheSameEnd() throws {
    let root = try temporaryFolder()
    let data = try textData(root)
    let whole = root + "/whole", parts = root + "/parts"
    for d in [whole, parts] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
    // About 2.5 s here, a good part of it writing checkpoints (one per step of each model).
    let steps = 60
    let started = Date()
    let a = try runTool(["run", try job(whole, data: data, steps: steps, dModel: 128, extra: "checkpoint_every = 1")])
    XCTAssertEqual(a.status, 0, a.err)
    let wholeSeconds = Date().timeIntervalSince(started)
    let jobFile = try job(parts, data: data, steps: steps, dModel: 128, extra: "checkpoint_every = 1")
    var kills = 0, finished = false
    // Kills at fractions of an uninterrupted run's time (start-up included): each resumed run gets
    // part of the way, and they add up to about three whole runs.
    let fractions = [0.1, 0.25, 0.15, 0.3, 0.2, 0.12, 0.28, 0.18, 0.22, 0.08, 0.3, 0.16, 0.26, 0.2, 0.14, 0.24]
    for (i, fraction) in fractions.enumerated() {
      let delay = fraction * wholeSeconds
      let p = try launch(["run", jobFile] + (i == 0 ? [] : ["--resume"]), log: root + "/run-\(i).log")
      usleep(useconds_t(delay * 1e6))
      if p.isRunning {
        kill(p.processIdentifier, SIGKILL)
        kills += 1
      }
      p.waitUntilExit()
      let log = (try? String(contentsOfFile: root + "/run-\(i).log", encoding: .utf8)) ?? ""
      if p.terminationReason == .exit {
        XCTAssertEqual(p.terminationStatus, 0, log)
        finished = true
        break
      }
      XCTAssertFalse(log.contains("error"), log)
    }
    if !finished {
      let last = try runTool(["run", jobFile, "--resume"])
      XCTAssertEqual(last.status, 0, last.err)
    }
    XCTAssertGreaterThanOrEqual(kills, 4, "the kills must land while the run works")
    try assertSameEnd(whole, parts, step: steps)
    // metrics.csv: each step's train row once per model, whatever was recorded before a kill.
    let rows = try String(contentsOfFile: parts + "/out/metrics.csv", encoding: .utf8).split(separator: "\n")
    for model in ["m000", "m001"] {
      let trained = rows.filter { $0.hasPrefix(model + ",") && $0.contains(",train,") }.map {
        $0.split(separator: ",")[1]
      }
      XCTAssertEqual(trained.map { Int($0)! }, Array(1...steps), model)
    }
    // TensorBoard, reading every run's event files, sees the same rows (each resume's START
    // dropping what the run before recorded past its checkpoint).
    assertMatchesMetrics(parts + "/out")
    let files = try FileManager.default.contentsOfDirectory(atPath: parts + "/out/tensorboard/m000")
    XCTAssertGreaterThan(files.count, 1, "a file per run that recorded rows")
  }

  /// SIGTERM in the middle of a run without periodic checkpoints: the process exits 143 within
  /// seconds, every model has a checkpoint of a step > 0, and `--resume` ends where an uninterrupted
  /// run does.
  func testSIGTERMCheckpointsEveryModelAndTheResumedRunEndsTheSame() throws {
    let root = try temporaryFolder()
    let data = try textData(root)
    let whole = root + "/whole", parts = root + "/parts"
    for d in [whole, parts] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
    let steps = 400
    let a = try runTool(["run", try job(whole, data: data, steps: steps)])
    XCTAssertEqual(a.status, 0, a.err)
    let jobFile = try job(parts, data: data, steps: steps)
    let log = root + "/term.log"
    let p = try launch(["run", jobFile], log: log)
    XCTAssertTrue(wait(60) { trainRows(parts + "/out") >= 20 }, "the run did not get going")
    let sent = Date()
    kill(p.processIdentifier, SIGTERM)
    p.waitUntilExit()
    let seconds = Date().timeIntervalSince(sent)
    let said = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
    XCTAssertEqual(p.terminationStatus, 143, said)
    XCTAssertLessThan(seconds, 10, said)
    XCTAssertTrue(said.contains("SIGTERM"), said)
    let summary = try XCTUnwrap(
      JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: parts + "/out/summary.json")))
        as? [String: Any])
    let models = try XCTUnwrap(summary["models"] as? [[String: Any]])
    XCTAssertEqual(models.count, 2)
    for m in models {
      let id = try XCTUnwrap(m["id"] as? String)
      let step = try XCTUnwrap(m["steps"] as? Int)
      XCTAssertGreaterThan(step, 0, id)
      XCTAssertLessThan(step, steps, id)
      XCTAssertEqual(m["status"] as? String, "paused", id)
      let units = try FileManager.default.contentsOfDirectory(atPath: parts + "/out/checkpoints/" + id)
      XCTAssertTrue(units.contains(String(format: "step-%08d", step)), "\(id): \(units)")
    }
    XCTAssertFalse(FileManager.default.fileExists(atPath: parts + "/out/.hydra-lock"))
    let resumed = try runTool(["run", jobFile, "--resume"])
    XCTAssertEqual(resumed.status, 0, resumed.err)
    try assertSameEnd(whole, parts, step: steps)
  }

  /// The disk fills up in the middle of a checkpoint: the run fails with the reason, the earlier
  /// checkpoints are whole and nothing half-written is left; `--resume` ends the same.
  func testADiskFullDuringACheckpointLosesNothing() throws {
    let root = try temporaryFolder()
    let data = try textData(root)
    let whole = root + "/whole", parts = root + "/parts"
    for d in [whole, parts] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
    XCTAssertEqual(try runTool(["run", try job(whole, data: data, steps: 8, extra: "checkpoint_every = 1")]).status, 0)
    let jobFile = try job(parts, data: data, steps: 8, extra: "checkpoint_every = 1")
    let p = try launch(["run", jobFile], log: root + "/full.log", environment: ["HYDRA_FAULT_CHECKPOINT": "m001:5"])
    p.waitUntilExit()
    let said = (try? String(contentsOfFile: root + "/full.log", encoding: .utf8)) ?? ""
    XCTAssertEqual(p.terminationStatus, 1, said)
    XCTAssertTrue(said.contains("No space left on device"), said)
    let folder = parts + "/out/checkpoints/m001"
    let names = try FileManager.default.contentsOfDirectory(atPath: folder)
    XCTAssertFalse(names.contains { $0.hasPrefix(".tmp-") || $0 == "step-00000005" }, "\(names)")
    let resumed = try runTool(["run", jobFile, "--resume"])
    XCTAssertEqual(resumed.status, 0, resumed.err)
    XCTAssertTrue(resumed.out.contains("m001: resumed at step 4"), resumed.out)
    try assertSameEnd(whole, parts, step: 8)
  }

  /// Killed after a model's last checkpoint unit was renamed into place but before its files were
  /// linked at the top of its folder (what transformers loads): there the top still held the step
  /// before (seen once in CI under mpirun), and a resume with nothing left to train kept it. The
  /// resume links the newest unit's files, whichever way the top was left.
  func testAResumeLinksTheNewestCheckpointAtTheTopOfTheFolder() throws {
    let root = try temporaryFolder()
    let data = try textData(root)
    let steps = 4
    let jobFile = try job(root, data: data, steps: steps, extra: "checkpoint_every = 1")
    XCTAssertEqual(try runTool(["run", jobFile]).status, 0)
    let m0 = root + "/out/checkpoints/m000", m1 = root + "/out/checkpoints/m001"
    let newest = String(format: "step-%08d", steps), before = String(format: "step-%08d", steps - 1)
    func bytes(_ path: String) -> Data? { FileManager.default.contents(atPath: path) }
    // As the kill left them: m000's weights at the top are the step before's, its config gone;
    // m001's weights at the top are a copy (a file system that refuses links), not a link.
    XCTAssertNotEqual(bytes("\(m0)/\(newest)/model.safetensors"), bytes("\(m0)/\(before)/model.safetensors"))
    unlink(m0 + "/model.safetensors")
    XCTAssertEqual(link("\(m0)/\(before)/model.safetensors", m0 + "/model.safetensors"), 0)
    unlink(m0 + "/config.json")
    let m1Weights = try XCTUnwrap(bytes(m1 + "/model.safetensors"))
    unlink(m1 + "/model.safetensors")
    try m1Weights.write(to: URL(fileURLWithPath: m1 + "/model.safetensors"))
    let resumed = try runTool(["run", jobFile, "--resume"])
    XCTAssertEqual(resumed.status, 0, resumed.err)
    for name in ["model.safetensors", "config.json"] {
      XCTAssertEqual(bytes("\(m0)/\(name)"), bytes("\(m0)/\(newest)/\(name)"), name)
      XCTAssertTrue(resumed.out.contains("m000/\(name) now links the newest checkpoint's"), resumed.out)
      XCTAssertEqual(bytes("\(m1)/\(name)"), bytes("\(m1)/\(newest)/\(name)"), name)
    }
    // The copy with the right bytes is left as it is.
    XCTAssertFalse(resumed.out.contains("m001/model.safetensors now links"), resumed.out)
  }

  /// A real full disk, where the machine lets a test mount a tmpfs (root with CAP_SYS_ADMIN): the
  /// output folder is a tmpfs with room for one checkpoint of each model and a half; the run fails
  /// with the reason, nothing half-written is left, and once the disk has grown `--resume` ends
  /// with the bytes of an uninterrupted run.
  func testARealFullDiskLosesNothing() throws {
    let root = try temporaryFolder()
    let data = try textData(root)
    let whole = root + "/whole", parts = root + "/parts"
    for d in [whole, parts + "/out"] {
      try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    }
    let wholeJob = try self.job(whole, data: data, steps: 8, extra: "checkpoint_every = 1")
    // Spills stay in RAM: only the checkpoints fill the disk.
    for file in [wholeJob] {
      let text = try String(contentsOfFile: file, encoding: .utf8)
      try text.replacingOccurrences(of: "host_memory = \"2MiB\"", with: "host_memory = \"64MiB\"").write(
        toFile: file, atomically: true, encoding: .utf8)
    }
    XCTAssertEqual(try runTool(["run", wholeJob]).status, 0)
    let unitFolder = whole + "/out/checkpoints/m000/step-00000008"
    let unit = try FileManager.default.contentsOfDirectory(atPath: unitFolder).reduce(0) { sum, name in
      sum + ((try FileManager.default.attributesOfItem(atPath: unitFolder + "/" + name)[.size] as? Int) ?? 0)
    }
    let mount = try runCommand(
      "/bin/mount", ["-t", "tmpfs", "-o", "size=\(3 * unit + 65536)", "tmpfs", parts + "/out"])
    if mount.status != 0 {
      throw XCTSkip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): \(mount.output)")
    }
    defer { _ = try? runCommand("/bin/umount", [parts + "/out"]) }
    let jobFile = try self.job(parts, data: data, steps: 8, extra: "checkpoint_every = 1")
    let text = try String(contentsOfFile: jobFile, encoding: .utf8)
    try text.replacingOccurrences(of: "host_memory = \"2MiB\"", with: "host_memory = \"64MiB\"").write(
      toFile: jobFile, atomically: true, encoding: .utf8)
    let full = try runTool(["run", jobFile])
    XCTAssertEqual(full.status, 1, full.err)
    XCTAssertTrue(full.err.contains("No space left on device"), full.err)
    var newest: [Int] = []
    for model in ["m000", "m001"] {
      let names = try FileManager.default.contentsOfDirectory(atPath: parts + "/out/checkpoints/" + model)
      XCTAssertFalse(names.contains { $0.hasPrefix(".tmp-") }, "\(model): \(names)")
      newest.append(names.compactMap { $0.hasPrefix("step-") ? Int($0.dropFirst(5)) : nil }.max() ?? 0)
    }
    // The first unit of the first model always fits; which model ran ahead depends on timing (a
    // model whose first unit did not fit starts afresh on resume).
    XCTAssertTrue(newest.contains { $0 >= 1 } && newest.allSatisfy { $0 <= 2 }, "newest checkpoints \(newest)")
    let grow = try runCommand("/bin/mount", ["-o", "remount,size=64m", parts + "/out"])
    XCTAssertEqual(grow.status, 0, grow.output)
    let resumed = try runTool(["run", jobFile, "--resume"])
    XCTAssertEqual(resumed.status, 0, resumed.err)
    try assertSameEnd(whole, parts, step: 8)
  }

  func testAnOutputFolderBelongsToOneRun() throws {
    let root = try temporaryFolder()
    let data = try textData(root)
    let jobFile = try job(root, data: data, steps: 3)
    XCTAssertEqual(try runTool(["run", jobFile]).status, 0)
    let summary = try Data(contentsOf: URL(fileURLWithPath: root + "/out/summary.json"))

    // Results are not replaced without --resume; both ways forward are named.
    let again = try runTool(["run", jobFile])
    XCTAssertEqual(again.status, 2, again.err)
    XCTAssertTrue(again.err.contains("holds the results of an earlier run"), again.err)
    XCTAssertTrue(again.err.contains("--resume") && again.err.contains("job.output"), again.err)
    XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: root + "/out/summary.json")), summary)

    // A folder held by a live run is refused; the lock names it.
    let lock = root + "/out/.hydra-lock"
    try "\(ProcessInfo.processInfo.hostName) \(getpid())\n".write(toFile: lock, atomically: true, encoding: .utf8)
    let busy = try runTool(["run", jobFile, "--resume"])
    XCTAssertEqual(busy.status, 2, busy.err)
    XCTAssertTrue(busy.err.contains("in use by another run") && busy.err.contains("pid \(getpid())"), busy.err)

    // The lock of a process that is gone is broken, with a line saying so, and released at the end.
    let gone = Process()
    gone.executableURL = URL(fileURLWithPath: "/bin/true")
    try gone.run()
    gone.waitUntilExit()
    try "\(ProcessInfo.processInfo.hostName) \(gone.processIdentifier)\n".write(
      toFile: lock, atomically: true, encoding: .utf8)
    let taken = try runTool(["run", jobFile, "--resume", "--set", "train.steps=4"])
    XCTAssertEqual(taken.status, 0, taken.err)
    XCTAssertTrue(taken.out.contains("is gone; taking the folder over"), taken.out)
    XCTAssertFalse(FileManager.default.fileExists(atPath: lock))

    // Two runs at once: the second is refused while the first holds the folder.
    try FileManager.default.createDirectory(atPath: root + "/two", withIntermediateDirectories: true)
    let longJob = try job(root + "/two", data: data, steps: 2000)
    let first = try launch(["run", longJob], log: root + "/first.log")
    XCTAssertTrue(wait(60) { FileManager.default.fileExists(atPath: root + "/two/out/.hydra-lock") })
    let second = try runTool(["run", longJob, "--resume"])
    XCTAssertEqual(second.status, 2, second.err)
    XCTAssertTrue(second.err.contains("in use by another run"), second.err)
    kill(first.processIdentifier, SIGKILL)
    first.waitUntilExit()
  }

  /// A process of an earlier run left alive (a rank of a killed mpirun still writing a checkpoint
  /// unit or a spill file) keeps the next run out of the folder, even when the process that held
  /// `.hydra-lock` is gone: the next run waits a few seconds, then refuses with exit 2, changing
  /// nothing there; once that process has ended, the resume goes on.
  func testAProcessLeftFromAKilledRunKeepsTheNextRunOut() throws {
    let root = try temporaryFolder()
    let data = try textData(root)
    let jobFile = try job(root, data: data, steps: 3, extra: "checkpoint_every = 1")
    XCTAssertEqual(try runTool(["run", jobFile]).status, 0)
    let before = try folderBytes(root + "/out")
    // The earlier run's last process: this test's own share of the folder's ranks lock, as a rank
    // of that run holds it (another open file description, so it counts against the next run).
    let fd = open(root + "/out/.hydra-ranks", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
    XCTAssertGreaterThanOrEqual(fd, 0)
    XCTAssertEqual(flock(fd, LOCK_SH), 0)
    let started = Date()
    let refused = try runTool(["run", jobFile, "--resume", "--set", "train.steps=5"])
    XCTAssertEqual(refused.status, 2, refused.err)
    XCTAssertTrue(refused.err.contains("is in use by a process of an earlier run that is still alive"), refused.err)
    XCTAssertTrue(refused.err.contains(root + "/out"), refused.err)
    XCTAssertGreaterThan(Date().timeIntervalSince(started), 4, "it waits for the process first")
    XCTAssertEqual(try folderBytes(root + "/out"), before, "a refused run changes nothing in the folder")
    close(fd)
    let resumed = try runTool(["run", jobFile, "--resume", "--set", "train.steps=5"])
    XCTAssertEqual(resumed.status, 0, resumed.err)
    XCTAssertTrue(resumed.out.contains("m000: resumed at step 3"), resumed.out)
  }

  /// Every file under `folder` (but the lock files) and its bytes.
  func folderBytes(_ folder: String) throws -> [String: Data] {
    var out: [String: Data] = [:]
    let walker = FileManager.default.enumerator(atPath: folder)!
    while let name = walker.nextObject() as? String {
      var isFolder: ObjCBool = false
      let path = folder + "/" + name
      guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder), !isFolder.boolValue,
        !name.hasSuffix(".hydra-ranks")
      else { continue }
      out[name] = try Data(contentsOf: URL(fileURLWithPath: path))
    }
    return out
  }

  /// A resume takes only a checkpoint the model itself wrote: a unit of another model put into its
  /// folder (by hand, or by anything that mixed folders up) is skipped for the previous whole unit,
  /// with a warning naming it, and the end is the uninterrupted run's bytes; when every unit there
  /// is another model's, the run stops with exit 2 naming the folder instead of starting over.
  func testAResumeNeverTakesAnotherModelsCheckpoint() throws {
    let root = try temporaryFolder()
    let data = try textData(root)
    let whole = root + "/whole"
    try FileManager.default.createDirectory(atPath: whole, withIntermediateDirectories: true)
    XCTAssertEqual(try runTool(["run", try job(whole, data: data, steps: 8)]).status, 0)
    let parts = root + "/parts"
    try FileManager.default.createDirectory(atPath: parts, withIntermediateDirectories: true)
    let jobFile = try job(parts, data: data, steps: 8, extra: "checkpoint_every = 1")
    let first = try runTool(["run", jobFile, "--pause-at", "4"])
    XCTAssertEqual(first.status, 0, first.err)
    let mine = parts + "/out/checkpoints/m000", theirs = parts + "/out/checkpoints/m001"
    let fm = FileManager.default
    // m001's newest unit, whole and intact, in m000's folder in place of m000's own.
    try fm.removeItem(atPath: mine + "/step-00000004")
    try fm.copyItem(atPath: theirs + "/step-00000004", toPath: mine + "/step-00000004")
    let resumed = try runTool(["run", jobFile, "--resume"])
    XCTAssertEqual(resumed.status, 0, resumed.err)
    let said = resumed.out + resumed.err
    XCTAssertTrue(
      said.contains("warning: m000: \(mine)/step-00000004/manifest.json: a checkpoint of model m001, not of m000"), said)
    XCTAssertTrue(said.contains("m000: resumed at step 3"), said)
    XCTAssertTrue(said.contains("m001: resumed at step 4"), said)
    try assertSameEnd(whole, parts, step: 8)

    // Every unit another model's: no resume from scratch, exit 2 naming the folder.
    let other = root + "/other"
    try fm.createDirectory(atPath: other, withIntermediateDirectories: true)
    let otherJob = try job(other, data: data, steps: 8, extra: "checkpoint_every = 1")
    XCTAssertEqual(try runTool(["run", otherJob, "--pause-at", "2"]).status, 0)
    let folder = other + "/out/checkpoints/m000"
    try fm.removeItem(atPath: folder)
    try fm.copyItem(atPath: other + "/out/checkpoints/m001", toPath: folder)
    let before = try folderBytes(other + "/out/checkpoints")
    let refused = try runTool(["run", otherJob, "--resume"])
    XCTAssertEqual(refused.status, 2, refused.err)
    XCTAssertTrue(refused.err.contains(folder) && refused.err.contains("no checkpoint here can be resumed"), refused.err)
    XCTAssertEqual(try folderBytes(other + "/out/checkpoints"), before, "nothing there was changed")
  }

  /// `--resume` continues only the job that made the results: a change to what the models compute
  /// is refused with the keys that changed; scheduling, devices and more steps are not.
  func testResumeRefusesAJobThatTrainsDifferentModels() throws {
    let root = try temporaryFolder()
    let data = try textData(root)
    let jobFile = try job(root, data: data, steps: 3)
    XCTAssertEqual(try runTool(["run", jobFile, "--pause-at", "2"]).status, 0)
    for (overrides, key) in [
      (["job.seed=5"], "job.seed: 21 -> 5"), (["train.batch_size=2"], "train.batch_size: 4 -> 2"),
      (["model.d_model=32"], "model.d_model: 64 -> 32"), (["sweep.train.lr=[3e-3, 2e-3]"], "sweep.train.lr"),
    ] {
      let r = try runTool(["run", jobFile, "--resume"] + overrides.flatMap { ["--set", $0] })
      XCTAssertEqual(r.status, 2, "\(overrides): \(r.err)")
      XCTAssertTrue(r.err.contains(key), "\(overrides): \(r.err)")
    }
    // The data file's content changed under the same name.
    let original = try String(contentsOfFile: data, encoding: .utf8)
    try (original + "more").write(toFile: data, atomically: true, encoding: .utf8)
    let changed = try runTool(["run", jobFile, "--resume"])
    XCTAssertEqual(changed.status, 2, changed.err)
    XCTAssertTrue(changed.err.contains("the data file \(data) changed"), changed.err)
    try original.write(toFile: data, atomically: true, encoding: .utf8)
    let fine = try runTool([
      "run", jobFile, "--resume", "--set", "scheduler.name=\"fifo\"", "--set", "cluster.devices=1", "--set",
      "train.steps=4",
    ])
    XCTAssertEqual(fine.status, 0, fine.err)
    XCTAssertTrue(fine.out.contains("m001: resumed at step 2"), fine.out)
  }
}

/// Runs a program, its standard output and error together.
func runCommand(_ path: String, _ args: [String]) throws -> (status: Int32, output: String) {
  let p = Process()
  p.executableURL = URL(fileURLWithPath: path)
  p.arguments = args
  let pipe = Pipe()
  p.standardOutput = pipe
  p.standardError = pipe
  try p.run()
  let data = pipe.fileHandleForReading.readDataToEndOfFile()
  p.waitUntilExit()
  return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}
