// swift-tools-version: 6.1
// libFuzzer targets for the readers of user input (job files, safetensors, data files), built apart
// from the main package because every module must be instrumented (-sanitize=fuzzer) and libFuzzer
// brings its own `main`. Scripts/fuzz builds and runs them; the test suite's FuzzTests is the seeded
// harness that runs everywhere.
import Foundation
import PackageDescription

// Coverage instrumentation from -sanitize=fuzzer; libFuzzer without its `main` (SwiftPM names the
// executable's entry point itself, and `Fuzz.swift` hands it to LLVMFuzzerRunDriver).
let fuzz: [SwiftSetting] = [.unsafeFlags(["-sanitize=fuzzer", "-parse-as-library"])]
// Scripts/fuzz finds the toolchain's libclang_rt.fuzzer_no_main and sets HYDRA_FUZZER_LIB.
let runtime = ProcessInfo.processInfo.environment["HYDRA_FUZZER_LIB"] ?? "libclang_rt.fuzzer_no_main.a"
let link: [LinkerSetting] = [.unsafeFlags(["-Xlinker", runtime]), .linkedLibrary("stdc++")]

let package = Package(
  name: "hydra-fuzz",
  dependencies: [.package(name: "hydra-mpi", path: "..")],
  targets: [
    .executableTarget(
      name: "hydra-fuzz", dependencies: [.product(name: "HydraRuntime", package: "hydra-mpi")],
      swiftSettings: fuzz + [.swiftLanguageMode(.v5)], linkerSettings: link)
  ]
)
