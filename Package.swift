// swift-tools-version: 6.1
import Foundation
import PackageDescription

// Shared settings, named once. Swift 5 language mode: tensors are raw buffers handed between device
// threads by the runtime, whose ordering (not the type system) guarantees exclusive access.
let settings: [SwiftSetting] = [
  .swiftLanguageMode(.v5),
  .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
]

// The cpu kernels' vector code is compiled for Haswell (AVX2, FMA: every x86 server since 2013)
// when building on x86-64, which halves GELU and the optimizer updates against the SSE2 baseline.
// HYDRA_PORTABLE=1 builds them for the baseline instead (a binary for older processors).
var kernelSettings = settings
#if arch(x86_64)
  if ProcessInfo.processInfo.environment["HYDRA_PORTABLE"] == nil {
    kernelSettings.append(.unsafeFlags(["-target-cpu", "haswell"]))
  }
#endif

let package = Package(
  name: "hydra-mpi",
  products: [
    .executable(name: "hydra-mpi", targets: ["hydra-mpi"]),
    .executable(name: "hydra-bench", targets: ["hydra-bench"]),
    .executable(name: "hydra-pingpong", targets: ["hydra-pingpong"]),
    .library(name: "HydraCore", targets: ["HydraCore"]),
    .library(name: "HydraRuntime", targets: ["HydraRuntime"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
    // SHA-256 of checkpoint files (their manifest).
    .package(url: "https://github.com/apple/swift-crypto", "3.12.0"..<"5.0.0"),
    // TensorBoard event files (tensorboard/<model>/events.out.tfevents.*): the runtime library only;
    // the message types are generated once by Scripts/generate-protos and committed.
    .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
  ],
  targets: [
    // C shims over system libraries.
    .systemLibrary(
      name: "CBLAS", path: "Sources/CBLAS", pkgConfig: "openblas",
      providers: [.apt(["libopenblas-dev"])]),
    .systemLibrary(name: "CZlib", path: "Sources/CZlib", providers: [.apt(["zlib1g-dev"])]),
    // libc's variadic calls, wrapped (a header alone: no library).
    .systemLibrary(name: "CSysCalls", path: "Sources/CSysCalls"),
    .systemLibrary(
      name: "CMPI", path: "Sources/CMPI", pkgConfig: "ompi", providers: [.apt(["libopenmpi-dev"])]),

    // The vocabulary every plugin speaks, and nothing else: tensors and device memory, the kernels,
    // partitioner, scheduler, backend and transport protocols and the values they exchange.
    // Haswell code too: its normal draws (every model's initial weights) vectorise.
    .target(name: "HydraPluginAPI", dependencies: ["CSysCalls"], swiftSettings: kernelSettings),
    // The maths of one shard.
    .target(name: "HydraCore", dependencies: ["HydraPluginAPI", "CZlib"], swiftSettings: settings),
    // Built-in kernels plugins.
    .target(
      name: "HydraKernelsReference", dependencies: ["HydraPluginAPI"], path: "Plugins/Kernels/Reference",
      swiftSettings: settings),
    .target(
      name: "HydraKernelsCPU", dependencies: ["HydraPluginAPI", "CBLAS"], path: "Plugins/Kernels/CPU",
      swiftSettings: kernelSettings),
    // A test device: `cpu`'s kernels on memory the host cannot touch (checks that the runtime
    // reaches device memory only through the plugin's copies).
    .target(
      name: "HydraKernelsDiscrete", dependencies: ["HydraPluginAPI", "HydraKernelsCPU"],
      path: "Plugins/Kernels/Discrete",
      swiftSettings: settings),

    // Built-in partitioners: shard boundaries from block costs and the device budget.
    .target(
      name: "HydraPartitioners", dependencies: ["HydraPluginAPI"], path: "Plugins/Partitioners",
      swiftSettings: settings),

    // Built-in backends: how tensors and control messages move between devices.
    .target(
      name: "HydraBackendSHM", dependencies: ["HydraPluginAPI"], path: "Plugins/Backends/SharedMemory",
      swiftSettings: settings),
    .target(
      name: "HydraBackendMPI", dependencies: ["HydraPluginAPI", "CMPI"], path: "Plugins/Backends/MPI",
      swiftSettings: settings),
    .executableTarget(
      name: "hydra-pingpong", dependencies: ["HydraBackendMPI", "HydraRuntime", "HydraCore", "HydraPluginLoader"],
      swiftSettings: settings),

    // Built-in schedulers: which ready shard task runs on which free device.
    .target(
      name: "HydraSchedulers", dependencies: ["HydraPluginAPI"], path: "Plugins/Schedulers",
      swiftSettings: settings),

    // Built-in selection policies: which models go on, wait or stop at each rung (early stopping).
    .target(
      name: "HydraSelection", dependencies: ["HydraPluginAPI"], path: "Plugins/Selection", swiftSettings: settings),

    // job.toml: decoding, validation, sweep expansion.
    .target(
      name: "HydraConfig", dependencies: ["HydraPluginAPI", .product(name: "TOMLKit", package: "TOMLKit")],
      swiftSettings: settings),
    // Protocols, registry, the step loop, output folder.
    .target(
      name: "HydraRuntime",
      dependencies: [
        "HydraCore", "HydraConfig", .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
      ],
      swiftSettings: settings),

    // hydra_plugin.h, the C ABI of plugins loaded at run time (`[plugins] load`).
    .target(name: "CHydraPlugin", path: "Sources/CHydraPlugin"),
    // Loads plugin libraries through that ABI and adapts what they register to the Swift protocols.
    .target(name: "HydraPluginLoader", dependencies: ["HydraRuntime", "CHydraPlugin"], swiftSettings: settings),

    // The one list of built-in plugins, shared by the tool and the tests.
    .target(
      name: "HydraBuiltins",
      dependencies: [
        "HydraRuntime", "HydraConfig", "HydraCore", "HydraKernelsCPU", "HydraKernelsReference",
        "HydraKernelsDiscrete", "HydraPartitioners", "HydraSchedulers", "HydraSelection", "HydraBackendSHM",
        "HydraBackendMPI", "HydraPluginLoader",
      ],
      swiftSettings: settings),

    .executableTarget(
      name: "hydra-mpi",
      dependencies: [
        "HydraBuiltins", "HydraRuntime", "HydraConfig", "HydraCore", "HydraBackendMPI", "HydraKernelsCPU",
        "HydraPluginLoader", .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ],
      swiftSettings: settings),
    .executableTarget(
      name: "hydra-bench",
      dependencies: [
        "HydraRuntime", "HydraCore", "HydraKernelsCPU", "HydraKernelsReference", "HydraPartitioners", "CBLAS",
        "HydraBackendSHM",
      ],
      swiftSettings: settings),

    .testTarget(
      name: "HydraCoreTests", dependencies: ["HydraCore", "HydraKernelsReference"],
      resources: [.copy("Fixtures")], swiftSettings: settings),
    .testTarget(
      name: "KernelsTests", dependencies: ["HydraCore", "HydraKernelsReference", "HydraKernelsCPU"],
      swiftSettings: settings),
    .testTarget(
      name: "PartitionerTests", dependencies: ["HydraPartitioners", "HydraRuntime", "HydraCore"],
      swiftSettings: settings),
    .testTarget(
      name: "SchedulerTests", dependencies: ["HydraSchedulers", "HydraSelection", "HydraRuntime", "HydraCore"],
      swiftSettings: settings),
    .testTarget(
      name: "PluginLoaderTests",
      dependencies: ["HydraPluginLoader", "HydraBuiltins", "HydraRuntime", "HydraSchedulers", "HydraKernelsReference"],
      swiftSettings: settings),
    .testTarget(
      name: "HydraConfigTests", dependencies: ["HydraConfig"], swiftSettings: settings),
    .testTarget(
      name: "HydraRuntimeTests",
      dependencies: [
        "HydraRuntime", "HydraPluginAPI", "HydraCore", "HydraConfig", "HydraKernelsReference", "HydraKernelsCPU",
        "HydraPartitioners",
        "HydraSchedulers", "HydraBackendSHM", "HydraBuiltins", "HydraKernelsDiscrete",
      ],
      swiftSettings: settings),
  ]
)
