#!/bin/sh
# Doxygen input filter: in comments, escape <name> - einmoe's notation for a
# list of dims, as in [<batch>, group, model] - so that Doxygen shows it
# instead of reading an HTML tag. Code before a // passes unchanged.
exec perl -pe 's{(//.*)$}{my $c = $1; $c =~ s/<([A-Za-z_][A-Za-z_ ]*)>/\\<$1\\>/g; $c}e' "$1"
