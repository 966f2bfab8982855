// swift-tools-version: 6.1
// A partitioner plugin written in Swift: a package of its own that depends on nothing of hydra-mpi
// but hydra_plugin.h, which build.sh copies into Sources/CHydraPlugin (a C module map over it).
import PackageDescription

let package = Package(
  name: "even-partitioner",
  products: [
    // A shared library: what `[plugins] load` names.
    .library(name: "EvenPartitioner", type: .dynamic, targets: ["EvenPartitioner"])
  ],
  targets: [
    .systemLibrary(name: "CHydraPlugin", path: "Sources/CHydraPlugin"),
    .target(name: "EvenPartitioner", dependencies: ["CHydraPlugin"], swiftSettings: [.swiftLanguageMode(.v5)]),
  ]
)
