fn main() {
    swarm_node::main();
}
