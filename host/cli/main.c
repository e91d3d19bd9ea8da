/* main.c - the `danlu` binary: dispatches to subcommands. */
#include "cli/commands.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv, FILE *out);
    const char *help;
} command;

static const command k_commands[] = {
    {"inspect", dl_cmd_inspect, "list the tensors and metadata of .safetensors files"},
    {"run", dl_cmd_run, "run one model component (text encoder, UNet, VAE) on tensors from a file"},
    {"tokenize", dl_cmd_tokenize, "print the CLIP token ids of a prompt"},
    {"train", dl_cmd_train, "train a LoRA on a folder of images and captions (sd-scripts options)"},
    {"finetune", dl_cmd_finetune, "fine-tune every UNet weight and save a checkpoint (sd-scripts' fine_tune.py)"},
    {"train-vae", dl_cmd_train_vae, "train every VAE weight (reconstruction + KL) and save it in the checkpoint"},
    {"sample", dl_cmd_sample, "generate images (txt2img / img2img) with samplers, CFG and LoRAs"},
    {"grid", dl_cmd_grid, "an X/Y grid of images (LoRA files, weights, prompts, CFG) in one PNG"},
    {"lora", dl_cmd_lora, "LoRA tools: merge (into a checkpoint or LoRAs into one), resize, extract"},
    {"convert", dl_cmd_convert, "checkpoints between single-file / diffusers layouts and dtypes; LoRAs kohya <-> PEFT"},
    {"verify", dl_cmd_verify, "a trained LoRA's provenance: which images it was trained on; retrain and compare"},
};

static void usage(FILE *f)
{
    fprintf(f, "danlu - LoRA training and sampling for Stable Diffusion\n\nusage: danlu <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof k_commands / sizeof *k_commands; i++)
        fprintf(f, "  %-10s %s\n", k_commands[i].name, k_commands[i].help);
    fprintf(f, "\n'danlu <command> --help' describes a command.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) { usage(stderr); return 2; }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) { usage(stdout); return 0; }
    for (size_t i = 0; i < sizeof k_commands / sizeof *k_commands; i++)
        if (strcmp(argv[1], k_commands[i].name) == 0) return k_commands[i].run(argc - 1, argv + 1, stdout);
    fprintf(stderr, "danlu: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
