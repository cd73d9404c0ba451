// Each subcommand lives in its own file and registers itself on the root CLI11 app.
#pragma once

#include <CLI/CLI.hpp>

namespace xmoe::cli {

void register_analyze(CLI::App& app);
void register_bench(CLI::App& app);
void register_bench_train(CLI::App& bench);  // cli/bench_train.cpp, under `bench`
void register_corpus(CLI::App& app);
void register_demo(CLI::App& app);
void register_eval(CLI::App& app);
void register_finetune(CLI::App& app);
void register_layer_init(CLI::App& app);
void register_layer_forward(CLI::App& app);
void register_pretrain(CLI::App& app);
void register_report(CLI::App& app);
void register_tokenizer(CLI::App& app);

}  // namespace xmoe::cli
