/* cmd_train.c - `danlu train`: LoRA training with sd-scripts' option names (JSON config and/or
 * command-line flags). */
#include "cli/commands.h"

#include "core/error.h"
#include "train/config.h"
#include "train/trainer.h"

#include <string.h>

static void train_usage(FILE *f)
{
    fprintf(f,
            "usage: danlu train [--config FILE.json] [--option value | --option=value | --flag] ...\n\n"
            "Trains a LoRA for a Stable Diffusion 1.x/2.x checkpoint on a folder of images and captions.\n"
            "Options are named as in kohya-ss/sd-scripts (train_network.py); flags override the JSON file.\n"
            "Required: --pretrained_model_name_or_path, --train_data_dir, --output_dir.\n"
            "Common: --resolution 512[,H] --train_batch_size 1 --max_train_steps 1600 --learning_rate 1e-4\n"
            "        --network_dim 16 --network_alpha 8 --network_args conv_dim=4 conv_alpha=1\n"
            "        --lr_scheduler cosine --lr_warmup_steps 100 --save_every_n_steps 500 --seed 42\n"
            "        --network_train_unet_only --enable_bucket --cache_latents --resume STATE.safetensors\n"
            "Ctrl-C saves a resumable state (<output_name>-state.safetensors) and exits.\n");
}

int dl_cmd_train(int argc, char **argv, FILE *out)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) { train_usage(out); return 0; }
    if (argc < 2) { train_usage(stderr); return 2; }
    dl_train_config cfg;
    dl_train_config_defaults(&cfg);
    if (dl_train_config_parse_args(&cfg, argc, argv, stderr) != DL_OK) {
        fprintf(stderr, "danlu train: %s\n", dl_error_msg());
        dl_train_config_free(&cfg);
        return 1;
    }
    fprintf(stderr, "danlu train: configuration\n");
    dl_train_config_print(&cfg, stderr);
    dl_trainer_opts opts = {.log = stderr, .tty = -1};
    dl_train_result res;
    int rc = dl_train_run(&cfg, &opts, &res);
    dl_train_config_free(&cfg);
    if (rc != DL_OK) {
        fprintf(stderr, "danlu train: %s\n", dl_error_msg());
        return 1;
    }
    if (res.interrupted) fprintf(out, "interrupted: state %s\n", res.output_path);
    else fprintf(out, "%s\n", res.output_path);
    dl_train_result_free(&res);
    return 0;
}
