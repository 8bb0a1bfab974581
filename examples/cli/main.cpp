// The `sageptq` command line; the logic lives in cli.hpp (run_cli), which tests call in-process.

#include <iostream>
#include <string>
#include <vector>

#include "cli.hpp"

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  return sageptq_cli::run_cli(args, std::cout, std::cerr);
}
