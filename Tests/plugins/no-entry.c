/* A shared library, but not a plugin: it exports neither entry point. */
int not_a_plugin(void) { return 1; }
