import Foundation
import HydraConfig
import HydraCore
import HydraRuntime

// libFuzzer targets for the readers of user input; HYDRA_FUZZ_TARGET picks one:
// - job: a job file, read and checked (`JobConfig.load`);
// - safetensors: a safetensors file, opened and every tensor read;
// - data: a data file as csv, tokens or text (its first byte picks), loaded and a batch drawn;
// - profile: a profile file of `hydra-mpi plan --profile`, read and its shapes' times asked for.
// Each must answer with a value or an error, never crash.

@_silgen_name("LLVMFuzzerRunDriver")
func runDriver(
  _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
  _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
) -> CInt

/// The input as a file (the readers take paths).
func inputFile(_ data: UnsafePointer<UInt8>, _ size: Int, suffix: String) -> String {
  let path = FileManager.default.temporaryDirectory.appendingPathComponent("hydra-fuzz-\(getpid())\(suffix)").path
  _ = FileManager.default.createFile(atPath: path, contents: Data(bytes: data, count: size))
  return path
}

func fuzzJob(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
  let known = KnownPlugins(
    backends: ["shm"], kernels: ["cpu"], partitioners: ["balanced"], schedulers: ["lrtf"],
    defaultPartitioner: "balanced", defaultScheduler: "lrtf")
  _ = try? JobConfig.load(path: inputFile(data, size, suffix: ".toml"), known: known)
  return 0
}

func fuzzSafetensors(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
  if let st = try? SafeTensorsFile(path: inputFile(data, size, suffix: ".safetensors")) {
    for name in st.names { _ = try? st.floats(name) }
  }
  return 0
}

func fuzzData(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
  guard size > 0 else { return 0 }
  let formats: [DataFormat] = [.csv, .tokens, .text]
  let format = formats[Int(data[0]) % 3]
  let path = inputFile(data + 1, size - 1, suffix: format == .csv ? ".csv" : ".bin")
  let spec = DataSpec(
    format: format, path: path, validationFraction: 0.2, context: 4, vocab: 1024, classes: format == .csv ? 10 : 0)
  if let set = try? Dataset.load(spec) {
    _ = set.trainBatch(step: 3, batchSize: 2, seed: 1, shuffle: true)
    _ = set.validationBatches(batchSize: 2, limit: 2)
  }
  return 0
}

func fuzzProfile(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
  let path = inputFile(data, size, suffix: ".json")
  if let profile = try? ProfileFile.read(path) {
    for s in profile.shapes.prefix(4) { _ = try? profile.blockSeconds(s.shape, blocks: 3, file: path) }
    _ = try? ProfileFile.parse(Data(profile.json().utf8), file: path)
  }
  return 0
}

let target = ProcessInfo.processInfo.environment["HYDRA_FUZZ_TARGET"] ?? "job"

/// One input, to the target HYDRA_FUZZ_TARGET names (libFuzzer's runtime also expects this symbol).
@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
  switch target {
  case "safetensors": return fuzzSafetensors(data, size)
  case "data": return fuzzData(data, size)
  case "profile": return fuzzProfile(data, size)
  default: return fuzzJob(data, size)
  }
}

/// The executable's entry point (SwiftPM names it): libFuzzer's driver with its usual options
/// (`-runs=N`, `-max_total_time=S`, corpus folders).
@_cdecl("hydra_fuzz_main")
public func entry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
  var argc = argc
  var argv = argv
  return runDriver(&argc, &argv) { testOneInput($0, $1) }
}
