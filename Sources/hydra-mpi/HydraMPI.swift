import ArgumentParser
import Foundation
import HydraBackendMPI
import HydraBuiltins
import HydraConfig
import HydraCore
import HydraKernelsCPU
import HydraPluginLoader
import HydraRuntime

@main
struct HydraMPI: ParsableCommand {
  static func main() {
    BLASCore.restartWithBetterCoreIfNeeded()
    // Output that goes to a file or a pipe (a batch system's log) is flushed line by line, so that
    // a run stopped by a signal keeps what it printed.
    if isatty(STDOUT_FILENO) == 0 { setvbuf(stdout, nil, _IOLBF, 0) }
    do {
      var command = try parseAsRoot()
      try command.run()
    } catch {
      exit(withError: error)
    }
  }

  static let configuration = CommandConfiguration(
    commandName: "hydra-mpi",
    abstract: "Train many models at once with shard parallelism.",
    discussion: """
      Exit codes: 0 done (models that diverged are reported, not fatal), 2 bad input (a config,
      data file or checkpoint; the message names the file and line), 1 anything else.
      """,
    subcommands: [Run.self, Validate.self, Plan.self, Plugins.self],
    defaultSubcommand: Run.self)
}

/// Options every command that reads a job shares.
struct JobOptions: ParsableArguments {
  @Argument(help: "The job file.")
  var job: String

  @Option(
    name: .customLong("set"),
    help: ArgumentHelp("Override a key of the job file, e.g. --set train.lr=0.01.", valueName: "key=value"))
  var overrides: [String] = []

  /// The built-in plugins and those of the job's `[plugins] load` libraries (loaded first, so that
  /// the job file may name them), and the job read against them.
  func load() throws -> (config: JobConfig, registry: PluginRegistry) {
    let registry = try Builtins.registry(loading: JobConfig.pluginLibraries(path: job, overrides: overrides))
    return (try JobConfig.load(path: job, known: Builtins.known(registry), overrides: overrides), registry)
  }
}

struct Run: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Train every model of a job (the default command).")
  @OptionGroup var options: JobOptions

  @Flag(help: "Continue each model from its checkpoint in the output folder, where there is one.")
  var resume = false

  @Option(
    help: ArgumentHelp(
      "Stop every model after this step, with a checkpoint there (continue with --resume).", valueName: "step"))
  var pauseAt: Int?

  func run() throws {
    var mpi: DistributedRuntime?
    do {
      try reportingErrors {
        let (config, registry) = try options.load()
        let runner = JobRunner(config: config, registry: registry)
        // "mpi" or a transport loaded from a plugin library: one device per process.
        let distributed = config.cluster.backend == "mpi" || registry.origin(.backend, config.cluster.backend) != nil
        if let pauseAt, pauseAt < 1 { throw InputError(file: "--pause-at", "needs a step >= 1, got \(pauseAt)") }
        let env = ProcessInfo.processInfo.environment
        if !distributed,
          let launched = (env["OMPI_COMM_WORLD_SIZE"] ?? env["PMI_SIZE"]).flatMap({ Int($0) }), launched > 1
        {
          // Every process would train the whole job and write the same output folder.
          throw InputError(
            file: config.file, line: config.line(table: "cluster", key: "backend"),
            "this is one of \(launched) processes started by an MPI launcher, but [cluster] backend = \"\(config.cluster.backend)\"; set backend = \"mpi\" (or run hydra-mpi without mpirun)"
          )
        }
        if distributed {
          // MPI starts before anything can fail on one rank only: from here on, a failure anywhere
          // ends every rank (MPI_Abort) instead of leaving the others waiting.
          guard
            let backend = try registry.makeBackend(config.cluster.backend, devices: config.cluster.devices)
              as? DistributedRuntime
          else { throw RuntimeError("backend \"\(config.cluster.backend)\" is not a distributed runtime") }
          mpi = backend
          backend.onFailure = { error in abortJob(backend, error) }
          runner.backend = backend
        }
        let coordinating = (mpi?.localDevice ?? 0) == 0
        // Under mpirun the standard output is forwarded (often a pty even when piped on): plain lines.
        runner.live = mpi == nil && LiveView.outputIsTerminal
        runner.resume = resume
        runner.pauseAt = pauseAt
        if coordinating {
          print(
            "hydra-mpi: job \(config.job.name): \(config.members.count) model(s) on \(mpi?.deviceCount ?? config.cluster.devices) device(s)\(mpi == nil ? "" : " (MPI ranks)"), kernels \(config.cluster.kernels)"
          )
        }
        // SIGTERM (what Slurm sends before it kills a job) or SIGINT: stop with a checkpoint of every
        // model; a second one ends the process at once.
        // Under mpi the signal reaches every rank (srun sends it to each task, mpirun forwards it):
        // rank 0 stops the job, the others go on serving it until it ends.
        // When a rank dies, mpirun sends SIGTERM to the others a second before it kills them: first
        // look for a dead rank on this host, so that rank 0 can say which died and what it held.
        let died: () -> Bool = {
          guard let mpi, mpi.deviceCount > 1 else { return false }
          if mpi.reportDiedNeighbours() { return true }
          // Rank 0 gives the other hosts' ranks a moment to report a death first.
          if coordinating { Thread.sleep(forTimeInterval: 0.2) }
          return false
        }
        let signals = StopSignals(coordinating ? runner : nil, died: died)
        let result: JobRunner.Result
        do {
          result = try runner.run()
        } catch let stopped as JobStopped {
          // Every rank got here: rank 0 says why, and all end normally with the same status.
          if coordinating {
            FileHandle.standardError.write(Data("error: the job could not start on every rank:\n\(stopped)\n".utf8))
          }
          mpi?.close()
          throw ExitCode(stopped.exitCode)
        } catch {
          if let mpi, mpi.deviceCount > 1 { abortJob(mpi, error) }
          throw error
        }
        result.store.removeSpillFiles()
        if result.coordinating {
          print(Report.ranking(result.runs))
          print(String(format: "makespan %.2f s; output in %@", result.makespan, result.output))
        }
        if let signal = signals.received, result.stopped || !coordinating {
          fflush(stdout)
          throw ExitCode(128 + signal)
        }
      }
    } catch {
      mpi?.close()
      throw error
    }
    mpi?.close()
  }
}

/// Ends every rank of an MPI job: this rank's error on its standard error and, through rank 0, on rank
/// 0's; then MPI_Abort with 2 for bad input and 1 for anything else.
func abortJob(_ backend: DistributedRuntime, _ error: Error) -> Never {
  let bad = error is InputError
  backend.fail("\(error)", code: bad ? 2 : 1)
}

struct Validate: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Check a job file and print its models, blocks and costs.")
  @OptionGroup var options: JobOptions

  func run() throws {
    try reportingErrors {
      let (config, registry) = try options.load()
      let runner = JobRunner(config: config, registry: registry)
      let plans = try runner.plan()
      print(Report.validation(config, plans: plans, deviceBudget: runner.deviceBudget, hostBudget: runner.hostBudget))
    }
  }
}

struct Plan: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Simulate the job's schedule on N devices under every scheduler, from estimated task times.",
    discussion: """
      Task times come from each shard's FLOPs (forward; a backward counts twice) at the given rate
      per device, where only their ratios matter for comparing schedulers; or from a profile of
      seconds per block: a file (--profile, for hardware that is not here; the format is in
      docs/planning.md) or measured here on the job's kernels and threads (--measure, cached as
      profile.json in the job's output folder and reused). Nothing is trained; with --output,
      each scheduler's simulated run is written as trace.json, schedule.svg and plan.json.
      """)
  @OptionGroup var options: JobOptions
  @Option(help: "Devices to simulate (default: the job's [cluster] devices).")
  var devices: Int?
  @Option(help: "Assumed GFLOP/s of one device (without a profile).")
  var gflops: Double = 100
  @Option(help: "A profile file: seconds per block of each model shape (docs/planning.md).")
  var profile: String?
  @Flag(help: "Measure each distinct model shape here (cached as profile.json in the job's output folder).")
  var measure = false
  @Option(help: "Timed repetitions per block when measuring.")
  var repetitions: Int = 3
  @Option(help: "Bytes per second of a shard's state moving to a device (default: the profile's, else none).")
  var bandwidth: Double?
  @Option(help: "Write each scheduler's simulated run (trace.json, schedule.svg, plan.json) into DIR/<scheduler>/.")
  var output: String?
  @Flag(help: "Also print, per scheduler, the wall time of its simulation and the microseconds per decision.")
  var timing = false
  @Option(help: "Simulate only this scheduler (default: every registered one).")
  var scheduler: String?

  func run() throws {
    try reportingErrors {
      let (config, registry) = try options.load()
      let n = devices ?? config.cluster.devices
      guard (1...65536).contains(n) else { throw InputError(file: "--devices", "needs 1...65536 devices, got \(n)") }
      guard gflops.isFinite && gflops > 0 else { throw InputError(file: "--gflops", "needs a rate > 0, got \(gflops)") }
      guard (1...1000).contains(repetitions) else {
        throw InputError(file: "--repetitions", "needs 1...1000 repetitions, got \(repetitions)")
      }
      guard !(measure && profile != nil) else {
        throw InputError(file: "--profile", "give a profile file or --measure, not both")
      }
      if let bandwidth, !(bandwidth.isFinite && bandwidth > 0) {
        throw InputError(file: "--bandwidth", "needs a rate > 0 in bytes per second, got \(bandwidth)")
      }
      let runner = JobRunner(config: config, registry: registry)
      let plans = try runner.plan()
      let times: TaskTimes
      var rate = bandwidth
      var source = "at \(gflops) GFLOP/s each"
      if let profile {
        let file = try ProfileFile.read(profile)
        times = .profile(file, file: profile)
        rate = rate ?? file.bandwidth
        source = "from the profile \(profile)"
      } else if measure {
        let (file, path) = try runner.measuredProfile(plans, repetitions: repetitions) { print($0) }
        times = .profile(file, file: path)
        rate = rate ?? file.bandwidth
        source = "from the profile measured here (\(path))"
      } else {
        times = .flops(gflops: gflops)
      }
      let models = try runner.simulatedModels(plans, times: times)
      let ids = config.members.map(\.id)
      let total = models.reduce(0) { $0 + $1.totalSeconds }
      print(
        "job \(config.job.name): \(models.count) model(s), \(plans.map(\.shards.count).reduce(0, +)) shards, on \(n) device(s) \(source)"
      )
      if let rate { print(String(format: "shard moves at %.3g bytes/s", rate)) }
      // The job's selection policy runs in each simulation too (made afresh for each; its options
      // checked here first, with the job file's line). The simulator has no losses: each model
      // reports the same stand-in score at every rung, a ranking drawn from the job's seed. What the
      // makespan depends on is how many models go on, which is the policy's rule.
      let selectionSection = config.selection
      var selection: () throws -> SimulatedSelection? = { nil }
      let selecting = try runner.makeSelection() != nil
      if selecting {
        var rng = SplitMix64(seed: config.job.seed ^ 0x5E1E_C710)
        let scores = models.map { _ in rng.nextNormal() }
        let setup = SelectionSetup(
          models: models.count, rungSteps: runner.rungSteps, reductionFactor: selectionSection.reductionFactor,
          options: selectionSection.options)
        selection = {
          SimulatedSelection(policy: try registry.makeSelection(selectionSection.name), setup: setup) { m, _ in
            scores[m]
          }
        }
        print(
          "selection \(selectionSection.name): which models go on at each rung is a stand-in (a ranking drawn from the job's seed); the simulator has no losses"
        )
      }
      print(
        String(
          format: "sum of the models' times %.2f s, ideal makespan %.2f s%@", total, total / Double(n),
          selecting ? " (every model to the end)" : ""))
      print(
        "scheduler        makespan   vs ideal  utilisation"
          + (timing ? "     wall  us/decision  decisions  us/task" : "") + "     moved")
      let names = scheduler.map { [$0] } ?? registry.schedulerNames
      for name in names {
        guard registry.schedulerNames.contains(name) else {
          throw InputError(file: "--scheduler", "scheduler \"\(name)\" is not registered")
        }
        let scheduler = try registry.makeScheduler(name, options: [:], seed: config.job.seed)
        let start = DispatchTime.now().uptimeNanoseconds
        let r = try simulate(models, devices: n, scheduler: scheduler, bandwidth: rate, selection: try selection())
        let wall = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        let mark = name == config.scheduler.name ? "  <- the job's" : ""
        let bytes = formatBytes(r.movedBytes)
        let moved = String(repeating: " ", count: max(0, 9 - bytes.count)) + bytes
        let times =
          timing
          ? String(
            format: " %7.2f s %11.2f %10d %8.3f", wall, wall * 1e6 / Double(max(r.decisions, 1)), r.decisions,
            wall * 1e6 / Double(max(r.intervals.count, 1))) : ""
        print(
          String(
            format: "%@ %8.2f s  %8.3f  %10.3f%@ %@%@", name.padding(toLength: 15, withPad: " ", startingAt: 0),
            r.makespan, r.makespan / (total / Double(n)), r.utilisation, times, moved, mark))
        if let output {
          try SimulationReport.write(
            r, scheduler: name, modelIDs: ids,
            title: "\(config.job.name): \(name) on \(n) device(s), simulated", to: output + "/" + name)
        }
      }
      if let output { print("simulated runs written to \(output)/<scheduler>/") }
    }
  }
}

struct Plugins: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "List the registered plugins: kind, name, origin (built-in or library file), ABI version.",
    discussion: """
      Plugin libraries implement the C ABI of hydra_plugin.h (--header prints it) and are named in
      a job file's [plugins] load; --load lists what a library registers.
      """)
  @Option(name: .customLong("load"), help: ArgumentHelp("Load a plugin library first (repeatable).", valueName: "path"))
  var libraries: [String] = []
  @Flag(help: "Print hydra_plugin.h, the C header plugin libraries are built against, and nothing else.")
  var header = false

  func run() throws {
    if header {
      print(PluginHeader.text, terminator: "")
      return
    }
    try reportingErrors {
      let cwd = FileManager.default.currentDirectoryPath
      let registry = try Builtins.registry(loading: libraries.map { $0.hasPrefix("/") ? $0 : cwd + "/" + $0 })
      let kinds: [(PluginOrigin.Kind, [String])] = [
        (.backend, registry.backendNames), (.kernels, registry.kernelsNames),
        (.partitioner, registry.partitionerNames), (.scheduler, registry.schedulerNames),
        (.selection, registry.selectionNames),
      ]
      print("kind         name              abi  origin")
      for (kind, names) in kinds {
        for name in names {
          let origin = registry.origin(kind, name)
          print(
            kind.rawValue.padding(toLength: 12, withPad: " ", startingAt: 0) + " "
              + name.padding(toLength: 17, withPad: " ", startingAt: 0) + " "
              + (origin.map { String($0.abiVersion) } ?? "-").padding(toLength: 4, withPad: " ", startingAt: 0) + " "
              + (origin?.file ?? "built-in"))
        }
      }
    }
  }
}

/// Bad input exits 2 with its message; anything else exits 1.
func reportingErrors(_ body: () throws -> Void) throws {
  do {
    try body()
  } catch let error as InputError {
    FileHandle.standardError.write(Data("error: \(error)\n".utf8))
    throw ExitCode(2)
  } catch let error as ExitCode {
    throw error
  } catch {
    FileHandle.standardError.write(Data("error: \(error)\n".utf8))
    throw ExitCode(1)
  }
}

/// SIGTERM and SIGINT while a job runs: the first asks the runner to stop with checkpoints. A second
/// SIGINT (Ctrl-C again) ends the process at once (exit 130). A second SIGTERM changes nothing: under
/// Slurm every task gets SIGTERM from its step daemon and again from srun, which forwards what it gets,
/// within a millisecond of each other; quitting on the second one lost every checkpoint at a time
/// limit. A launcher that wants the process gone sends SIGKILL after its own wait (Slurm's KillWait).
final class StopSignals: @unchecked Sendable {
  private var sources: [DispatchSourceSignal] = []
  private let lock = NSLock()
  private var _received: Int32?
  /// The first signal received, if any.
  var received: Int32? { lock.lock(); defer { lock.unlock() }; return _received }

  /// `runner` nil: the first signal is only noted (a rank that serves the coordinator's stop).
  /// `died` runs first on the first signal; true means it was a failure, not a stop request.
  init(_ runner: JobRunner?, died: @escaping () -> Bool = { false }) {
    for sig in [SIGTERM, SIGINT] {
      signal(sig, SIG_IGN)
      let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
      source.setEventHandler { [self] in
        lock.lock()
        let first = _received == nil
        if first { _received = sig }
        lock.unlock()
        if !first {
          if sig == SIGINT { _exit(128 + sig) }
          return
        }
        if sig == SIGTERM && died() { return }
        guard let runner else { return }
        let name = sig == SIGTERM ? "SIGTERM" : "SIGINT"
        FileHandle.standardError.write(
          Data(
            "hydra-mpi: \(name): stopping; every model ends or drops its current step and is checkpointed\(sig == SIGINT ? " (Ctrl-C again to quit at once)" : "")\n"
              .utf8))
        runner.requestStop()
      }
      source.resume()
      sources.append(source)
    }
  }
}
