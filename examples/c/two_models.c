/* Two model libraries in one C program: every symbol and macro of a library made by
 * `kiln compile` carries its name, so they link side by side (see README.md):
 *
 *     kiln compile examples/mlp.kir -o DIR/libmlp.so
 *     kiln compile examples/classifier.onnx -o DIR/libclassifier.so
 *     cc examples/c/two_models.c -I DIR -L DIR -lmlp -lclassifier -Wl,-rpath,DIR -o DIR/two
 *     DIR/two
 *
 * It runs the mlp on one row of four numbers and the classifier on one plain red picture, and
 * prints the mlp's probabilities and the classifier's label.
 */
#include <stdio.h>
#include <stdlib.h>

#include "classifier.h"
#include "mlp.h"

static kiln_buffer input(const char *name, int32_t dtype, uint32_t rank, const int64_t *shape,
                         float *data, size_t n) {
    kiln_buffer b = {0};
    b.name = name;
    b.dtype = dtype;
    b.rank = rank;
    for (uint32_t a = 0; a < rank; a++)
        b.shape[a] = shape[a];
    b.data = data;
    b.bytes = n * sizeof(float);
    return b;
}

int main(void) {
    mlp_model *mlp = mlp_create();
    classifier_model *classifier = classifier_create();
    if (!mlp || !classifier) {
        fprintf(stderr, "cannot load: %s%s\n", mlp ? "" : mlp_last_error(),
                classifier ? "" : classifier_last_error());
        return 1;
    }

    /* The mlp: x is f32[batch, 4]; one row. */
    float x[4] = {0.5f, -1.0f, 0.25f, 2.0f};
    const int64_t x_shape[2] = {1, 4};
    kiln_buffer mlp_in = input(MLP_INPUT_NAMES[0], KILN_F32, 2, x_shape, x, 4);
    float probs[16];
    kiln_buffer mlp_out = {0};
    mlp_out.name = MLP_OUTPUT_NAMES[0];
    mlp_out.data = probs;
    mlp_out.bytes = sizeof probs;
    if (mlp_run(mlp, &mlp_in, MLP_INPUTS, &mlp_out, 1) != 0) {
        fprintf(stderr, "mlp: %s\n", mlp_last_error());
        return 1;
    }
    printf("mlp %s:", mlp_out.name);
    for (int64_t i = 0; i < mlp_out.shape[1]; i++)
        printf(" %.6f", probs[i]);
    printf("\n");

    /* The classifier: image is f32[batch, 3, 16, 16]; one red picture. */
    enum { PIXELS = 16 * 16 };
    float *image = malloc(3 * PIXELS * sizeof(float));
    for (int i = 0; i < 3 * PIXELS; i++)
        image[i] = i < PIXELS ? 0.7f : -0.3f;
    const int64_t image_shape[4] = {1, 3, 16, 16};
    kiln_buffer cls_in = input(CLASSIFIER_INPUT_NAMES[0], KILN_F32, 4, image_shape, image, 3 * PIXELS);
    int64_t label = -1;
    kiln_buffer cls_out = {0};
    cls_out.name = "label";
    cls_out.data = &label;
    cls_out.bytes = sizeof label;
    if (classifier_run(classifier, &cls_in, CLASSIFIER_INPUTS, &cls_out, 1) != 0) {
        fprintf(stderr, "classifier: %s\n", classifier_last_error());
        return 1;
    }
    printf("classifier label: %lld\n", (long long)label);

    free(image);
    classifier_destroy(classifier);
    mlp_destroy(mlp);
    return 0;
}
